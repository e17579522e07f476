#!/usr/bin/env bash
# bench/fake-webd.sh — stand-in for target/release/webd, to test bench/run.sh end to end
# while webd does not build:  WEBD_BIN=bench/fake-webd.sh DURATION=3 ROUNDS=1 bench/run.sh
#
# Accepts webd's flags (--listen ADDR --root DIR --workers N --admin X --control-socket PATH;
# anything else is ignored) and execs an nginx in the foreground with the same settings as
# run.sh's reference nginx, so the report should show ratio ~ 1.0. Its config, pid file and
# logs go to <dir of --control-socket>/fake-webd/ (run.sh removes that dir on exit).
set -euo pipefail

listen=127.0.0.1:8080 root=. workers=2 sock=""
while (($# > 0)); do
    case $1 in
        --listen) listen=$2; shift 2 ;;
        --root) root=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --control-socket) sock=$2; shift 2 ;;
        --admin | --config | --access-log | --log-format | --heartbeat-interval | \
            --heartbeat-timeout | --grace | --drain-timeout | --user) shift 2 ;;
        *) echo "fake-webd: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
root=$(cd "$root" && pwd)
if [[ -n $sock ]]; then
    dir=$(dirname "$sock")/fake-webd
    mkdir -p "$dir"
else
    dir=$(mktemp -d /tmp/fake-webd.XXXXXX)
fi
nginx=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

cat >"$dir/nginx.conf" <<EOF
user root;
worker_processes $workers;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen $listen;
        root $root;
    }
}
EOF
echo "fake-webd: nginx on $listen, root $root, $workers workers (config $dir/nginx.conf)" >&2
exec "$nginx" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
