#!/usr/bin/env bash
# The production stack on one machine, without docker: nginx (TLS, nginx/keystile.conf) in front
# of several Keystile instances sharing PostgreSQL and Redis.
#
#   scripts/stack.sh up       start everything (idempotent: what runs already is kept)
#   scripts/stack.sh status   what runs, with each part's health; exit 1 if anything is down
#   scripts/stack.sh restart  restart the Keystile instances one at a time (after an upgrade:
#                             nginx sends requests to the others meanwhile)
#   scripts/stack.sh down     stop what `up` started
#   scripts/stack.sh nginx-config   write the nginx configuration and check it (nginx -t), nothing else
#
# Environment (defaults in brackets):
#   KEYSTILE_CONFIG     the model map [config.yaml]
#   KEYSTILE_MASTER_KEY the master key [from .env; `make .env` writes one]
#   DATABASE_URL        [postgresql+asyncpg://postgres@127.0.0.1:5432/keystile; created if missing]
#   REDIS_URL           [redis://127.0.0.1:6379/0; a redis-server is started if none answers there]
#   STACK_DIR           pid files, logs, the generated nginx configuration [.stack]
#   STACK_INSTANCES     Keystile instances [2], on STACK_PORT_BASE, +1, ... [4001]
#   STACK_HTTPS_PORT    [8443]   STACK_HTTP_PORT [8080] (redirects to HTTPS)   STACK_BIND [127.0.0.1]
#   STACK_CERTS         ca.crt, server.crt, server.key [nginx/certs; made by nginx/make-cert.sh]
#   KEYSTILE_BIN        [.venv/bin/keystile]   NGINX [nginx]
# The instances trust X-Forwarded-For from nginx only (KEYSTILE_TRUSTED_PROXIES=127.0.0.1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STACK_DIR=$(mkdir -p "${STACK_DIR:-.stack}" && cd "${STACK_DIR:-.stack}" && pwd)
INSTANCES=${STACK_INSTANCES:-2}
PORT_BASE=${STACK_PORT_BASE:-4001}
HTTPS_PORT=${STACK_HTTPS_PORT:-8443}
HTTP_PORT=${STACK_HTTP_PORT:-8080}
BIND=${STACK_BIND:-127.0.0.1}
CERTS=$(mkdir -p "${STACK_CERTS:-nginx/certs}" && cd "${STACK_CERTS:-nginx/certs}" && pwd)
KEYSTILE_BIN=${KEYSTILE_BIN:-$ROOT/.venv/bin/keystile}
NGINX=${NGINX:-nginx}
export KEYSTILE_CONFIG=$(realpath "${KEYSTILE_CONFIG:-config.yaml}")
export DATABASE_URL=${DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/keystile}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export KEYSTILE_TRUSTED_PROXIES=${KEYSTILE_TRUSTED_PROXIES:-127.0.0.1}

say() { echo "stack: $*" >&2; }
die() { say "error: $*"; exit 1; }

# host and port of a URL like scheme://user@host:port/db
url_host() { local u=${1#*://}; u=${u#*@}; u=${u%%/*}; echo "${u%:*}"; }
url_port() { local u=${1#*://}; u=${u#*@}; u=${u%%/*}; [[ $u == *:* ]] && echo "${u##*:}" || echo "$2"; }
answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_http() {  # URL [curl options...]: until it answers 200, at most 120 s
    local url=$1; shift
    for _ in $(seq 600); do
        curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

master_key() {
    if [ -z "${KEYSTILE_MASTER_KEY:-}" ] && [ -f .env ]; then
        KEYSTILE_MASTER_KEY=$(sed -n 's/^KEYSTILE_MASTER_KEY=//p' .env | tail -1)
    fi
    [ -n "${KEYSTILE_MASTER_KEY:-}" ] || die "KEYSTILE_MASTER_KEY is not set and .env has none (run: make .env)"
    export KEYSTILE_MASTER_KEY
}

postgres_up() {
    case "$DATABASE_URL" in postgresql*) ;; *) say "database: $DATABASE_URL"; return ;; esac
    local host port db
    host=$(url_host "$DATABASE_URL"); port=$(url_port "$DATABASE_URL" 5432); db=${DATABASE_URL##*/}; db=${db%%\?*}
    answers "$host" "$port" || die "PostgreSQL does not answer on $host:$port (start it, or set DATABASE_URL)"
    if command -v psql >/dev/null; then
        local user=${DATABASE_URL#*://}; user=${user%%@*}; user=${user%%:*}
        if ! psql -h "$host" -p "$port" -U "$user" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
            psql -h "$host" -p "$port" -U "$user" -d postgres -qc "CREATE DATABASE \"$db\"" && say "created database $db"
        fi
    fi
    say "database: PostgreSQL on $host:$port/$db"
}

redis_up() {
    local host port
    host=$(url_host "$REDIS_URL"); port=$(url_port "$REDIS_URL" 6379)
    if answers "$host" "$port"; then say "redis: $host:$port"; return; fi
    command -v redis-server >/dev/null || die "Redis does not answer on $host:$port and redis-server is not installed"
    redis-server --port "$port" --bind "$host" --daemonize yes --save "" --appendonly no \
        --pidfile "$STACK_DIR/redis.pid" --logfile "$STACK_DIR/redis.log" --dir "$STACK_DIR"
    for _ in $(seq 50); do answers "$host" "$port" && break; sleep 0.1; done
    answers "$host" "$port" || die "redis-server did not start (see $STACK_DIR/redis.log)"
    say "redis: started on $host:$port"
}

instance_up() {
    local i=$1 port=$((PORT_BASE + i - 1)) pidfile="$STACK_DIR/keystile-$i.pid"
    if alive "$pidfile"; then say "keystile-$i: running (pid $(cat "$pidfile"))"; return; fi
    # In STACK_DIR: the usage journal (keystile-usage/) is kept there, shared by the instances (each
    # locks its own files; one that starts replays what a killed one left).
    (cd "$STACK_DIR" && exec "$KEYSTILE_BIN" serve --config "$KEYSTILE_CONFIG" --host 127.0.0.1 --port "$port") \
        >>"$STACK_DIR/keystile-$i.log" 2>&1 &
    echo $! > "$pidfile"
}

instance_wait() {
    local i=$1 port=$((PORT_BASE + i - 1))
    wait_http "http://127.0.0.1:$port/health/liveliness" && return
    tail -20 "$STACK_DIR/keystile-$i.log" >&2
    die "keystile-$i did not come up on port $port (log: $STACK_DIR/keystile-$i.log)"
}

nginx_config() {
    local servers="" i
    for i in $(seq "$INSTANCES"); do
        servers="$servers    server 127.0.0.1:$((PORT_BASE + i - 1)) max_fails=3 fail_timeout=10s;\n"
    done
    # nginx/keystile.conf as it is, with this machine's ports, certificates and instances.
    sed -e "s|^    server keystile:4000 .*|$servers|" \
        -e "s|^    listen 80;|    listen $BIND:$HTTP_PORT;|" -e '/listen \[::\]:80;/d' \
        -e "s|^    listen 443 ssl http2;|    listen $BIND:$HTTPS_PORT ssl http2;|" -e '/listen \[::\]:443 /d' \
        -e "s|/etc/nginx/certs/|$CERTS/|" -e "s|/var/log/nginx/|$STACK_DIR/nginx-|" \
        -e "s|return 301 https://\$host\$request_uri;|return 301 https://\$host:$HTTPS_PORT\$request_uri;|" \
        nginx/keystile.conf > "$STACK_DIR/keystile.conf"
    for expect in "server 127.0.0.1:$PORT_BASE " "$STACK_DIR/nginx-access.log" "listen $BIND:$HTTPS_PORT ssl" "listen $BIND:$HTTP_PORT;" \
                  "$CERTS/server.crt" "https://\$host:$HTTPS_PORT"; do
        grep -qF "$expect" "$STACK_DIR/keystile.conf" || die "nginx/keystile.conf changed shape: no '$expect' after rewriting"
    done
    mkdir -p "$STACK_DIR/nginx-tmp"
    local user=""
    if [ "$(id -u)" = 0 ]; then  # workers drop to nobody; they write request bodies here
        user="user nobody $(id -gn nobody 2>/dev/null || echo nogroup);"
        chown nobody "$STACK_DIR/nginx-tmp"
    fi
    cat > "$STACK_DIR/nginx.conf" <<CONF
$user
worker_processes 1;
pid $STACK_DIR/nginx.pid;
error_log $STACK_DIR/nginx-error.log warn;
events { worker_connections 1024; }
http {
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path $STACK_DIR/nginx-tmp/body;
    proxy_temp_path $STACK_DIR/nginx-tmp/proxy;
    fastcgi_temp_path $STACK_DIR/nginx-tmp/fastcgi;
    uwsgi_temp_path $STACK_DIR/nginx-tmp/uwsgi;
    scgi_temp_path $STACK_DIR/nginx-tmp/scgi;
    include $STACK_DIR/keystile.conf;
}
CONF
}

nginx_up() {
    command -v "$NGINX" >/dev/null || die "nginx is not installed (Debian/Ubuntu: apt-get install -y nginx)"
    [ -s "$CERTS/server.crt" ] || nginx/make-cert.sh "$CERTS" >&2
    nginx_config
    "$NGINX" -q -t -p "$STACK_DIR" -c "$STACK_DIR/nginx.conf" || die "nginx rejected $STACK_DIR/nginx.conf"
    if alive "$STACK_DIR/nginx.pid"; then
        "$NGINX" -p "$STACK_DIR" -c "$STACK_DIR/nginx.conf" -s reload
    else
        "$NGINX" -p "$STACK_DIR" -c "$STACK_DIR/nginx.conf"
    fi
    wait_http "https://localhost:$HTTPS_PORT/health/liveliness" --cacert "$CERTS/ca.crt" \
        --resolve "localhost:$HTTPS_PORT:$BIND" || die "nginx does not answer on https://$BIND:$HTTPS_PORT"
}

up() {
    master_key
    [ -x "$KEYSTILE_BIN" ] || die "$KEYSTILE_BIN not found (run: make install)"
    postgres_up
    redis_up
    "$KEYSTILE_BIN" db upgrade >>"$STACK_DIR/migrate.log" 2>&1 || { tail -20 "$STACK_DIR/migrate.log" >&2; die "migration failed"; }
    for i in $(seq "$INSTANCES"); do instance_up "$i"; done
    for i in $(seq "$INSTANCES"); do instance_wait "$i"; done
    nginx_up
    say "up: https://localhost:$HTTPS_PORT/v1 (CA: $CERTS/ca.crt) -> $INSTANCES instances from port $PORT_BASE"
}

stop_pid() {  # pidfile name: TERM, then KILL after 30 s
    local pidfile=$1 name=$2 pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    # nginx removes its pid file as it quits: gone between the check and here is "stopped", not an
    # error (under set -e a failed cat ended `down` before it stopped the instances)
    pid=$(cat "$pidfile" 2>/dev/null) || { rm -f "$pidfile"; say "$name: stopped"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    say "$name: stopped"
}

down() {
    if alive "$STACK_DIR/nginx.pid"; then
        "$NGINX" -p "$STACK_DIR" -c "$STACK_DIR/nginx.conf" -s quit 2>/dev/null || true
    fi
    stop_pid "$STACK_DIR/nginx.pid" nginx
    for pidfile in "$STACK_DIR"/keystile-*.pid; do
        [ -e "$pidfile" ] && stop_pid "$pidfile" "$(basename "$pidfile" .pid)"
    done
    stop_pid "$STACK_DIR/redis.pid" "redis (started by the stack)"
}

restart() {  # rolling: one instance at a time, each back up before the next goes
    master_key
    local i
    for i in $(seq "$INSTANCES"); do
        stop_pid "$STACK_DIR/keystile-$i.pid" "keystile-$i"
        instance_up "$i"
        instance_wait "$i"
        say "keystile-$i: restarted"
    done
}

status() {
    local ok=0 i port
    for i in $(seq "$INSTANCES"); do
        port=$((PORT_BASE + i - 1))
        if alive "$STACK_DIR/keystile-$i.pid" && curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/health/liveliness"; then
            echo "keystile-$i  up    http://127.0.0.1:$port (pid $(cat "$STACK_DIR/keystile-$i.pid"))"
        else
            echo "keystile-$i  down  http://127.0.0.1:$port"; ok=1
        fi
    done
    if alive "$STACK_DIR/nginx.pid" && curl -fsS -o /dev/null --max-time 2 --cacert "$CERTS/ca.crt" \
            --resolve "localhost:$HTTPS_PORT:$BIND" "https://localhost:$HTTPS_PORT/health/liveliness"; then
        echo "nginx       up    https://localhost:$HTTPS_PORT (CA: $CERTS/ca.crt)"
    else
        echo "nginx       down  https://localhost:$HTTPS_PORT"; ok=1
    fi
    local rh rp; rh=$(url_host "$REDIS_URL"); rp=$(url_port "$REDIS_URL" 6379)
    if answers "$rh" "$rp"; then echo "redis       up    $rh:$rp"; else echo "redis       down  $rh:$rp"; ok=1; fi
    case "$DATABASE_URL" in
        postgresql*)
            local ph pp; ph=$(url_host "$DATABASE_URL"); pp=$(url_port "$DATABASE_URL" 5432)
            if answers "$ph" "$pp"; then echo "postgres    up    $ph:$pp"; else echo "postgres    down  $ph:$pp"; ok=1; fi ;;
    esac
    return $ok
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    restart) restart ;;
    nginx-config)  # write and check the nginx configuration only
        [ -s "$CERTS/server.crt" ] || nginx/make-cert.sh "$CERTS" >&2
        nginx_config && "$NGINX" -q -t -p "$STACK_DIR" -c "$STACK_DIR/nginx.conf" && echo "$STACK_DIR/nginx.conf" ;;
    status) status ;;
    *) echo "usage: $0 up|down|status|restart" >&2; exit 2 ;;
esac
