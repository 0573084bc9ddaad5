#!/usr/bin/env bash
# Starts (or stops) a private PostgreSQL server for kumo's tests, under
# .cache/pg, listening on 127.0.0.1:${KUMO_PG_PORT:-55432}. Prints the base
# URL that tests read from KUMO_TEST_PG_URL. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/.cache/pg
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The port this checkout's cluster uses is remembered, so start is idempotent
# and two checkouts on one machine do not collide.
if [ -n "${KUMO_PG_PORT:-}" ]; then
  port=$KUMO_PG_PORT
elif [ -f "$dir/port" ]; then
  port=$(cat "$dir/port")
else
  port=55432
  while port_in_use "$port"; do port=$((port + 1)); done
fi
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bin" ] || { echo "pg-test-server: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }
case "${1:-start}" in
  start)
    mkdir -p "$dir"
    echo "$port" > "$dir/port"
    chown postgres:postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    fi
    if ! as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
    fi
    as_pg psql -h 127.0.0.1 -p "$port" -U postgres -tAc \
      "SELECT 1 FROM pg_roles WHERE rolname = 'kumo'" | grep -q 1 ||
      as_pg psql -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE ROLE kumo LOGIN SUPERUSER PASSWORD 'kumo'"
    echo "postgres://kumo:kumo@127.0.0.1:$port"
    ;;
  stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
    ;;
esac
