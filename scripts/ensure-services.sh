#!/usr/bin/env bash
# Make sure the servers the test suite talks to are up on loopback:
#   Redis 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432 (trust auth, role root, databases
#   test and root), NATS with JetStream 127.0.0.1:4222.
# A server that already answers is left exactly as it is (never stopped, never
# reconfigured). One that does not answer is started; on a fresh machine whose binaries
# are missing they are installed with apt-get first (root only).
# Usage: scripts/ensure-services.sh [redis] [postgres] [nats]   (default: all three)
set -euo pipefail

REDIS_PORT=6379
PG_PORT=5432
NATS_PORT=4222
WAIT_SECONDS=${WAIT_SECONDS:-30}

say() { printf 'ensure-services: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# True when something accepts TCP connections on 127.0.0.1:$1 (bash /dev/tcp; no nc here).
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Send $2 to 127.0.0.1:$1 and print the first reply line (empty on any failure).
first_reply_line() {
    local port=$1 request=$2 line=""
    if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
        [ -n "$request" ] && printf '%b' "$request" >&3
        IFS= read -r -t 2 line <&3 || true
        exec 3<&- 3>&-
    fi
    printf '%s' "${line%$'\r'}"
}

redis_ready() { [ "$(first_reply_line "$REDIS_PORT" 'PING\r\n')" = "+PONG" ]; }

postgres_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2
    else
        port_open "$PG_PORT"
    fi
}

# NATS greets every client with an INFO line that says whether JetStream is enabled.
nats_info() { first_reply_line "$NATS_PORT" ''; }
nats_ready() { [[ "$(nats_info)" == INFO* ]]; }

wait_until() {
    local what=$1 check=$2 i
    for ((i = 0; i < WAIT_SECONDS * 10; i++)); do
        if "$check"; then
            say "$what is up"
            return 0
        fi
        sleep 0.1
    done
    die "$what did not answer within ${WAIT_SECONDS}s after starting it; see its log (for NATS: /var/log/nats-server.log; a nats-server already running on another port keeps start-stop-daemon from starting this one)"
}

APT_UPDATED=0
apt_install() {
    [ "$(id -u)" -eq 0 ] || die "$* not installed and not running; run this script as root so it can apt-get install $*, or start the server yourself"
    command -v apt-get >/dev/null 2>&1 || die "$* not installed and apt-get is not available; install $* with your package manager"
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            || say "apt-get update failed; trying with the package lists already here"
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_redis() {
    if redis_ready; then
        say "Redis already answers on 127.0.0.1:$REDIS_PORT"
        return
    fi
    port_open "$REDIS_PORT" && die "something listens on 127.0.0.1:$REDIS_PORT but does not answer PING like Redis; free the port or fix that server"
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server
        # The package's own init script may have started it already.
        if redis_ready; then
            say "Redis answers on 127.0.0.1:$REDIS_PORT after installing it"
            return
        fi
    fi
    mkdir -p /var/lib/redis /var/log/redis
    say "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_until "Redis" redis_ready
}

# The cluster this machine has ("15" for /etc/postgresql/15/main), after installing it if needed.
postgres_version() {
    ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1
}

ensure_postgres() {
    local installed_now=0 version hba
    if postgres_ready; then
        say "PostgreSQL already answers on 127.0.0.1:$PG_PORT"
    else
        port_open "$PG_PORT" && die "something listens on 127.0.0.1:$PG_PORT but is not a ready PostgreSQL; free the port or fix that server"
        if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(postgres_version)" ]; then
            apt_install postgresql
            installed_now=1
        fi
        version=$(postgres_version)
        [ -n "$version" ] || die "PostgreSQL is installed but /etc/postgresql has no cluster; create one with: pg_createcluster <version> main"
        if [ "$installed_now" -eq 1 ]; then
            # A cluster we just created ourselves: let local clients in without passwords,
            # as the tests expect. An existing cluster's configuration is never touched.
            hba=/etc/postgresql/$version/main/pg_hba.conf
            say "configuring trust auth on 127.0.0.1 in $hba (fresh install)"
            sed -i -E 's/^(local|host)([[:space:]].*[[:space:]])(peer|md5|scram-sha-256)$/\1\2trust/' "$hba"
            grep -qE '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba" \
                || printf 'host all all 127.0.0.1/32 trust\n' >> "$hba"
            pg_ctlcluster --skip-systemctl-redirect "$version" main stop >/dev/null 2>&1 || true
        fi
        say "starting PostgreSQL $version"
        pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
        wait_until "PostgreSQL" postgres_ready
    fi
    ensure_postgres_role_and_databases
}

# Role root and databases test and root, created only if missing (this changes no server
# setting). Needs root, to act as the postgres superuser over the local socket.
ensure_postgres_role_and_databases() {
    if command -v psql >/dev/null 2>&1 \
        && psql -h 127.0.0.1 -p "$PG_PORT" -U root -d test -tAc 'select 1' >/dev/null 2>&1 \
        && psql -h 127.0.0.1 -p "$PG_PORT" -U root -d root -tAc 'select 1' >/dev/null 2>&1; then
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "PostgreSQL lacks role root or database test/root; create them as the postgres superuser (createuser -s root; createdb -O root test; createdb -O root root)"
    local as_pg=(runuser -u postgres --)
    command -v runuser >/dev/null 2>&1 || as_pg=(su postgres -s /bin/sh -c)
    pg_sql() {
        if [ "${as_pg[0]}" = runuser ]; then
            "${as_pg[@]}" psql -p "$PG_PORT" -tAc "$1"
        else
            "${as_pg[@]}" "psql -p $PG_PORT -tAc \"$1\""
        fi
    }
    if [ "$(pg_sql "select 1 from pg_roles where rolname = 'root'")" != "1" ]; then
        say "creating PostgreSQL role root"
        pg_sql "create role root superuser login" >/dev/null
    fi
    local db
    for db in test root; do
        if [ "$(pg_sql "select 1 from pg_database where datname = '$db'")" != "1" ]; then
            say "creating PostgreSQL database $db"
            pg_sql "create database $db owner root" >/dev/null
        fi
    done
}

ensure_nats() {
    local info
    if nats_ready; then
        say "NATS already answers on 127.0.0.1:$NATS_PORT"
    else
        port_open "$NATS_PORT" && die "something listens on 127.0.0.1:$NATS_PORT but does not greet like NATS; free the port or fix that server"
        [ -x /usr/sbin/nats-server ] || apt_install nats-server
        [ -x /usr/sbin/nats-server ] || die "nats-server was installed but /usr/sbin/nats-server is missing"
        mkdir -p /var/lib/nats-server
        say "starting NATS with JetStream"
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
        # --oknodo: a nats-server already running elsewhere (another port) counts as
        # started, and then nothing answers here; wait_until says so.
        wait_until "NATS" nats_ready
    fi
    info=$(nats_info)
    [[ "$info" == *'"jetstream":true'* ]] \
        || die "the NATS server on 127.0.0.1:$NATS_PORT runs without JetStream; restart it with -js (this script does not reconfigure a running server)"
}

# Arguments choose services (redis, postgres, nats); none means all three.
[ "$#" -gt 0 ] || set -- redis postgres nats
for service in "$@"; do
    case "$service" in
        redis) ensure_redis ;;
        postgres) ensure_postgres ;;
        nats) ensure_nats ;;
        *) die "unknown service '$service'; choose from: redis postgres nats" ;;
    esac
done
say "ready: $*"
