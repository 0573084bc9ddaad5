# Written by the kumo openstack-dashboard charm ({{ unit.name }}); edits are overwritten.
# Guide section 12-2 (ASCII only: Apache reads this file as ASCII): Horizon's Keystone, and who may ask for the dashboard.
OPENSTACK_HOST = "{{ vars.keystone_host }}"
OPENSTACK_KEYSTONE_URL = "{{ vars.auth_url }}"
OPENSTACK_KEYSTONE_DEFAULT_ROLE = "{{ config["default-role"] }}"
OPENSTACK_API_VERSIONS = {"identity": 3, "image": 2, "volume": 3}
ALLOWED_HOSTS = ["*"]
SECRET_KEY = "{{ vars.secret_key }}"
{% if vars.memcache %}
SESSION_ENGINE = "django.contrib.sessions.backends.cache"
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
        "LOCATION": "{{ vars.memcache }}",
    }
}
{% endif %}
