#!/bin/bash
# Shared by kumo's OpenStack charms: each links it as hooks/lib.sh (packed
# as a copy). Every hook of these charms ends in the charm's `configure`,
# which converges the unit on what its config and relations say now. It is
# idempotent, so a hook run twice, or after a crash, changes nothing, and
# the order relations arrive in does not matter.
#
# Conventions: templates render whole files an operator can read beside
# the install guide; passwords are kumo secrets (`secret-get`), passed to
# templates as variables and never logged or put in relation data.
set -euo pipefail

STATE="/var/lib/kumo-charm/${JUJU_UNIT_NAME//\//-}"
mkdir -p "$STATE"
chmod 700 /var/lib/kumo-charm

log() { juju-log "$*"; }

# apt_install PKG...: Debian packages without prompts and without starting
# their services (policy-rc.d): the charm configures first, then starts.
# apt_update: `apt-get update`, given up on after 3 minutes and tried
# again, 3 times in all. Why: with many machines updating at once through
# one apt-cacher-ng, the proxy can fail a request for an index another
# client is fetching, and apt 2.6 has been seen to wait forever after it.
apt_update() {
  local try
  for try in 1 2 3; do
    timeout 180 apt-get update -q && return 0
    log "apt-get update did not finish (try $try of 3)"
    sleep $((try * 5))
  done
  return 1
}

apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  status-set maintenance "installing ${missing[*]}"
  local started=$SECONDS
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  if [ ! -f /var/lib/kumo-charm/apt-updated ]; then
    apt_update
    touch /var/lib/kumo-charm/apt-updated
  fi
  # A maintainer script can fail once and pass again (Horizon's asset
  # compression does): one more try before the hook fails.
  if ! apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${missing[@]}"; then
    log "apt-get install failed; configuring what is unpacked and trying again"
    dpkg --configure -a || true
    apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${missing[@]}"
  fi
  rm -f /usr/sbin/policy-rc.d
  trap - EXIT
  # What a plain script would spend too: the lower bound of a deployment.
  log "packages installed in $((SECONDS - started)) s: ${missing[*]}"
}

# render TEMPLATE DEST MODE OWNER [KEY=VALUE...]: writes DEST from the
# charm's template (extra variables as `vars.KEY`). Succeeds when the file
# changed, fails when it was already so — `if render ...; then restart`.
render() {
  local tpl=$1 dest=$2 mode=$3 owner=$4 before="" tmp
  shift 4
  [ -f "$dest" ] && before=$(sha256sum <"$dest")
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$dest.XXXXXX")
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  render-template "$tpl" - "$@" >"$tmp"
  mv "$tmp" "$dest"
  [ "$before" != "$(sha256sum <"$dest")" ]
}

# once KEY INPUT CMD...: runs CMD unless it already succeeded for this
# INPUT (a database sync per database, a bootstrap per address...).
once() {
  local key=$1 input=$2 sum
  shift 2
  sum=$(printf '%s' "$input" | sha256sum | cut -c1-64)
  if [ "$(cat "$STATE/once-$key" 2>/dev/null)" = "$sum" ]; then return 0; fi
  "$@"
  printf '%s' "$sum" >"$STATE/once-$key"
}

# rel_get ENDPOINT KEY: the value of KEY from the first remote unit on any
# relation of ENDPOINT that has set it; empty when none has.
rel_get() {
  local rid unit v
  for rid in $(relation-ids "$1"); do
    for unit in $(relation-list -r "$rid"); do
      v=$(relation-get -r "$rid" "$2" "$unit" 2>/dev/null || true)
      if [ -n "$v" ]; then
        printf '%s' "$v"
        return 0
      fi
    done
  done
}

# rel_all ENDPOINT KEY: every remote unit's value of KEY, one per line.
rel_all() {
  local rid unit v
  for rid in $(relation-ids "$1"); do
    for unit in $(relation-list -r "$rid"); do
      v=$(relation-get -r "$rid" "$2" "$unit" 2>/dev/null || true)
      [ -z "$v" ] || printf '%s\n' "$v"
    done
  done
}

# rel_set_all ENDPOINT KEY=VALUE...: sets this unit's data on every
# relation of ENDPOINT.
rel_set_all() {
  local ep=$1 rid
  shift
  for rid in $(relation-ids "$ep"); do relation-set -r "$rid" "$@"; done
}

related() { [ -n "$(relation-ids "$1")" ]; }

address() { unit-get private-address; }

# db_url ENDPOINT [DATABASE]: SQLAlchemy URL of the database MariaDB made
# for this application (interface mysql); fails until it is ready.
db_url() {
  local host user secret db
  host=$(rel_get "$1" host)
  user=$(rel_get "$1" user)
  secret=$(rel_get "$1" secret)
  db=${2:-$(rel_get "$1" database)}
  [ -n "$host" ] && [ -n "$user" ] && [ -n "$secret" ] || return 1
  # A unit may hand over its databases before the one asked for exists.
  if [ -n "${2:-}" ] && ! rel_get "$1" databases | tr ' ' '\n' | grep -qx "$2"; then
    return 1
  fi
  printf 'mysql+pymysql://%s:%s@%s/%s' "$user" "$(secret-get "$secret")" "$host" "$db"
}

# amqp_url ENDPOINT: oslo.messaging transport URL (interface rabbitmq).
amqp_url() {
  local host user secret vhost
  host=$(rel_get "$1" host)
  user=$(rel_get "$1" user)
  secret=$(rel_get "$1" secret)
  vhost=$(rel_get "$1" vhost)
  [ -n "$host" ] && [ -n "$user" ] && [ -n "$secret" ] || return 1
  [ "$vhost" = "/" ] && vhost=""
  printf 'rabbit://%s:%s@%s:5672/%s' "$user" "$(secret-get "$secret")" "$host" "$vhost"
}

# The service credentials Keystone made for this application, as
# `auth_url region username password` on one line; fails until ready.
identity() {
  local ep=${1:-identity-service} auth region user secret
  auth=$(rel_get "$ep" auth_url)
  region=$(rel_get "$ep" region)
  user=$(rel_get "$ep" service_user)
  secret=$(rel_get "$ep" secret)
  [ -n "$auth" ] && [ -n "$user" ] && [ -n "$secret" ] || return 1
  printf '%s %s %s %s' "$auth" "$region" "$user" "$(secret-get "$secret")"
}

# wait_http URL [SECONDS]: until URL answers at all (any HTTP status).
wait_http() {
  local i
  for ((i = 0; i < ${2:-120}; i++)); do
    if curl -s -o /dev/null -m 5 "$1"; then return 0; fi
    sleep 1
  done
  log "no answer from $1 after ${2:-120} s"
  return 1
}

# uwsgi_tune INI N: Debian's API services run under uwsgi with a process
# per core; a small machine wants fewer. And uwsgi's HTTP socket closes a
# connection after each reply without saying so, so a client that reuses
# it (keystoneauth does) gets a reset: say `Connection: close`.
uwsgi_tune() {
  [ -f "$1" ] || return 1
  local changed=1
  if ! grep -qE "^processes *= *$2\$" "$1"; then
    sed -i -E "s/^processes *=.*/processes = $2/" "$1"
    changed=0
  fi
  if ! grep -qx "add-header = Connection: close" "$1"; then
    sed -i -E "0,/^\[uwsgi\]/s//[uwsgi]\nadd-header = Connection: close/" "$1"
    changed=0
  fi
  return $changed
}

# restart_if CHANGED UNIT...: (re)starts and enables the units, restarting
# only when their configuration changed (CHANGED=1).
restart_if() {
  local changed=$1 u
  shift
  for u in "$@"; do
    systemctl enable -q "$u" 2>/dev/null || true
    if [ "$changed" = 1 ] || ! systemctl is-active -q "$u"; then
      systemctl restart "$u"
    fi
  done
}

# all_active UNIT...: every unit running; else names the first that is not.
all_active() {
  local u
  for u in "$@"; do
    if ! systemctl is-active -q "$u"; then
      printf '%s' "$u"
      return 1
    fi
  done
}

# request_identity SERVICE TYPE URL DESCRIPTION: asks Keystone, over
# identity-service, for a service user and the service's endpoints.
request_identity() {
  rel_set_all identity-service service="$1" type="$2" url="$3" description="$4"
}

# The variables every `[keystone_authtoken]` template takes, from the
# identity-service relation; fails until Keystone has made the user.
authtoken_vars() {
  local id
  id=$(identity "${1:-identity-service}") || return 1
  set -- $id
  printf 'auth_url=%s\nregion=%s\nuser=%s\npassword=%s\n' "$1" "$2" "$3" "$4"
}
