#!/usr/bin/env bash
# Start throwaway PostgreSQL and Redis servers on loopback for the test suite and
# print the environment variables the tests read.  Safe to run twice.
# Usage: eval "$(bash .ci/services.sh)"
set -euo pipefail
base=${ZIS_SERVICES_DIR:-/tmp/zis-services}
pgport=${ZIS_PG_PORT:-54329}
redisport=${ZIS_REDIS_PORT:-63799}
mkdir -p "$base"

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$pgbin" ]; then
  echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2
  exit 1
fi
runas=()
if [ "$(id -u)" = "0" ]; then
  # initdb and postgres refuse to run as root
  runas=(runuser -u postgres --)
  chown postgres "$base"
fi
if ! "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pgport"; then
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
  if ! redis-cli -p "$redisport" ping >/dev/null 2>&1; then
    redis-server --port "$redisport" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --logfile "$base/redis.log" >/dev/null
    for _ in $(seq 50); do redis-cli -p "$redisport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  echo "export ZIS_TEST_REDIS_URL=redis://127.0.0.1:$redisport/0"
fi
