#!/usr/bin/python3
"""Makes Keystone hold what the charm asks for: projects, roles, users with
their role assignments, services and their endpoints (guide §4-9, §4-10).

Reads one JSON request on stdin (passwords included, so they never appear
on a command line) and the admin password from KUMO_ADMIN_PASSWORD. Every
step finds before it creates, so running it again changes nothing. One
process with one session instead of the ~40 `openstack` commands of the
guide, which take seconds each.
"""
import json
import os
import sys

import requests
from keystoneauth1 import session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client


def named(manager, name, **filters):
    for item in manager.list(**filters):
        if item.name == name:
            return item
    return None


def main():
    req = json.load(sys.stdin)
    auth = v3.Password(
        auth_url=req["auth_url"],
        username="admin",
        password=os.environ["KUMO_ADMIN_PASSWORD"],
        project_name="admin",
        user_domain_id="default",
        project_domain_id="default",
    )
    # uwsgi closes a connection after a reply without a body (204): a new
    # connection per request, not a reused one that has been reset.
    http = requests.Session()
    http.headers["Connection"] = "close"
    ks = client.Client(
        session=session.Session(auth=auth, session=http),
        endpoint_override=req["auth_url"],
    )
    domain = ks.domains.get("default")

    projects = {}
    for p in req.get("projects", []):
        project = named(ks.projects, p["name"], domain=domain)
        if project is None:
            project = ks.projects.create(
                p["name"], domain, description=p.get("description", "")
            )
            print(f"project {p['name']} created")
        projects[p["name"]] = project

    roles = {}
    for name in req.get("roles", []):
        role = named(ks.roles, name)
        if role is None:
            role = ks.roles.create(name)
            print(f"role {name} created")
        roles[name] = role

    for u in req.get("users", []):
        project = projects.get(u["project"]) or named(
            ks.projects, u["project"], domain=domain
        )
        user = named(ks.users, u["name"], domain=domain)
        if user is None:
            user = ks.users.create(
                u["name"], domain=domain, password=u["password"],
                default_project=project,
            )
            print(f"user {u['name']} created")
        else:
            ks.users.update(user, password=u["password"])
        for name in u.get("roles", []):
            role = roles.get(name) or named(ks.roles, name)
            ks.roles.grant(role, user=user, project=project)

    for s in req.get("services", []):
        service = None
        for candidate in ks.services.list(type=s["type"]):
            if candidate.name == s["name"]:
                service = candidate
        if service is None:
            service = ks.services.create(
                s["name"], type=s["type"], description=s.get("description", "")
            )
            print(f"service {s['name']} ({s['type']}) created")
        existing = {
            e.interface: e
            for e in ks.endpoints.list(service=service, region_id=req["region"])
        }
        for interface, url in s["endpoints"].items():
            e = existing.get(interface)
            if e is None:
                ks.endpoints.create(
                    service, url, interface=interface, region=req["region"]
                )
                print(f"endpoint {s['name']} {interface} {url} created")
            elif e.url != url:
                ks.endpoints.update(e, url=url)
                print(f"endpoint {s['name']} {interface} now {url}")


if __name__ == "__main__":
    main()
