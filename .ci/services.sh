#!/usr/bin/env bash
# Start throwaway PostgreSQL and Redis servers on loopback for the test suite and print the
# environment variables the tests read.  Safe to run twice: a server this script started
# in the same directory is reused; a server it did not start is never used (it stops with
# an error naming the port instead, since the tests create and drop schemas).
#
#   eval "$(bash .ci/services.sh)"         start, or reuse, and export the URLs
#   bash .ci/services.sh --stop            stop the servers (their data stays in the dir)
#
# Environment: ZIS_SERVICES_DIR (data, sockets and logs; default /tmp/zis-services),
# ZIS_PG_PORT (default 54329), ZIS_REDIS_PORT (default 63799).  .ci/run sets all three to
# get servers of its own on free ports.
set -euo pipefail
base=${ZIS_SERVICES_DIR:-/tmp/zis-services}
pgport=${ZIS_PG_PORT:-54329}
redisport=${ZIS_REDIS_PORT:-63799}
mode=start
case "${1:-}" in
  "") ;;
  --stop) mode=stop ;;
  *) echo "usage: bash .ci/services.sh [--stop]" >&2; exit 2 ;;
esac

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$pgbin" ]; then
  echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2
  exit 1
fi
runas=()
if [ "$(id -u)" = "0" ]; then
  runas=(runuser -u postgres --)  # initdb and postgres refuse to run as root
fi

if [ "$mode" = stop ]; then
  [ -d "$base" ] || exit 0
  base=$(cd "$base" && pwd -P)
  if [ -f "$base/pg/postmaster.pid" ]; then
    "${runas[@]}" "$pgbin/pg_ctl" -D "$base/pg" -w stop -m fast >/dev/null || true
  fi
  # The port it was started on, not $ZIS_REDIS_PORT: --stop needs only the directory.
  if [ -f "$base/redis.port" ] && command -v redis-cli >/dev/null 2>&1; then
    port=$(cat "$base/redis.port")
    if [ "$(redis-cli -p "$port" config get logfile 2>/dev/null | tail -n 1)" = "$base/redis.log" ]; then
      redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    fi
    rm -f "$base/redis.port"
  fi
  exit 0
fi

mkdir -p "$base"
base=$(cd "$base" && pwd -P)  # servers report absolute paths; compare like with like
[ ${#runas[@]} -eq 0 ] || chown postgres "$base"

foreign() {
  echo "Port $1 is in use by a $2 server this script did not start (not in $base)." \
       "Stop it, or pick other ports with ZIS_PG_PORT / ZIS_REDIS_PORT." >&2
  exit 1
}

if "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pgport"; then
  datadir=$("$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -w -tAc "SHOW data_directory" 2>/dev/null || true)
  [ "$datadir" = "$base/pg" ] || foreign "$pgport" PostgreSQL
else
  rm -rf "$base/pg"
  "${runas[@]}" "$pgbin/initdb" -D "$base/pg" -U postgres -A trust >/dev/null
  "${runas[@]}" "$pgbin/pg_ctl" -D "$base/pg" -l "$base/pg.log" -w \
     -o "-h 127.0.0.1 -p $pgport -k $base -c fsync=off -c max_connections=300" start >/dev/null
fi
"$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname='zis_test'" | grep -q 1 \
  || "$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U postgres zis_test
echo "export ZIS_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$pgport/zis_test"

if command -v redis-server >/dev/null 2>&1; then
  if redis-cli -p "$redisport" ping >/dev/null 2>&1; then
    # Started here means logging here: the one setting that tells our server from another.
    [ "$(redis-cli -p "$redisport" config get logfile | tail -n 1)" = "$base/redis.log" ] \
      || foreign "$redisport" Redis
  else
    redis-server --port "$redisport" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --logfile "$base/redis.log" --pidfile "$base/redis.pid" >/dev/null
    for _ in $(seq 50); do redis-cli -p "$redisport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  echo "$redisport" > "$base/redis.port"
  echo "export ZIS_TEST_REDIS_URL=redis://127.0.0.1:$redisport/0"
fi
echo "# stop them with: ZIS_SERVICES_DIR=$base bash .ci/services.sh --stop"
