#!/usr/bin/env bash
# tests/conformance/run.sh — REDbot and HTTPolice against webd and nginx on the same files.
#
# Usage:  tests/conformance/run.sh            (works from any cwd)
#   WEBD_BIN=path   a webd binary (default: cargo build --release, then target/release/webd)
#   OUT=dir         where the HAR files, raw exchanges and report go
#                   (default: tests/conformance/out)
#
# Installs what is missing: nginx-light and its brotli_static module (apt), and REDbot and
# HTTPolice in a virtualenv under ${TMPDIR:-/var/tmp} (HTTPolice 0.12 needs bitstring < 4).
# Both servers listen on 127.0.0.1 only, on free ports, and are stopped on exit.
# Prints a markdown report (also in $OUT/report.md); exits 1 if REDbot finds an error (a
# note of level BAD) on webd.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
OUT=${OUT:-$REPO/tests/conformance/out}
VENV=${TMPDIR:-/var/tmp}/webd-conformance
log() { printf '[conformance] %s\n' "$*" >&2; }
die() { printf '[conformance] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
((EUID == 0)) || SUDO=sudo
BROTLI_MODULE=/usr/lib/nginx/modules/ngx_http_brotli_static_module.so
need=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
[[ -f $BROTLI_MODULE ]] || need+=(libnginx-mod-http-brotli-static)
command -v brotli >/dev/null 2>&1 || need+=(brotli)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $VENV/bin/httpolice || ! -x $VENV/bin/redbot ]]; then
    log "installing REDbot and HTTPolice into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q redbot httpolice 'bitstring<4' >&2
fi

if [[ -z ${WEBD_BIN:-} ]]; then
    cargo build --release -q >&2
    WEBD_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/webd
fi
[[ -x $WEBD_BIN ]] || die "no webd binary at $WEBD_BIN"

TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/webd-conformance.XXXXXX")
WEBD_PID="" NGINX_PID=""
cleanup() {
    for pid in $WEBD_PID $NGINX_PID; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $WEBD_PID $NGINX_PID; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    rm -rf -- "$TMP"
}
trap cleanup EXIT

# The same small site for both: HTML, CSS and JS with sidecars, a binary, a directory.
ROOT=$TMP/root
mkdir -p "$ROOT/sub" "$TMP/nginx" "$OUT"
python3 - "$ROOT" <<'PY'
import os, sys
root = sys.argv[1]
open(os.path.join(root, "index.html"), "w").write(
    "<!doctype html><html><head><title>t</title><link rel=stylesheet href=/style.css>"
    "<script src=/app.js></script></head><body>" + "<p>hello world</p>\n" * 200 + "</body></html>\n")
open(os.path.join(root, "style.css"), "w").write("body { color: #333; }\n" * 300)
open(os.path.join(root, "app.js"), "w").write("console.log('hello');\n" * 100)
open(os.path.join(root, "sub", "index.html"), "w").write("<p>sub</p>\n")
open(os.path.join(root, "1k.bin"), "wb").write(os.urandom(1024))
PY
for f in style.css app.js; do brotli -k "$ROOT/$f"; gzip -k "$ROOT/$f"; done
chmod -R a+rX "$TMP"

free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && { echo "$p"; return; }
    done
    die "no free port"
}
wait_up() { # wait_up PID URL
    for _ in $(seq 300); do
        kill -0 "$1" 2>/dev/null || return 1
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$2" || true) == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

WEBD_PORT=$(free_port)
setsid "$WEBD_BIN" --listen "127.0.0.1:$WEBD_PORT" --root "$ROOT" --workers 1 --admin off \
    --control-socket "$TMP/webd.sock" </dev/null >"$OUT/webd.log" 2>&1 &
WEBD_PID=$!
wait_up "$WEBD_PID" "http://127.0.0.1:$WEBD_PORT/index.html" || die "webd did not start (see $OUT/webd.log)"

NGINX_PORT=$(free_port)
cat >"$TMP/nginx/nginx.conf" <<CONF
load_module $BROTLI_MODULE;
user root;
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    sendfile on;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    gzip_static on;
    brotli_static on;
    client_body_temp_path $TMP/nginx/body;
    server { listen 127.0.0.1:$NGINX_PORT; root $ROOT; }
}
CONF
setsid "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" </dev/null >/dev/null 2>&1 &
NGINX_PID=$!
wait_up "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/index.html" || die "nginx did not start"

log "webd on $WEBD_PORT, nginx $("$NGINX" -v 2>&1 | sed 's/.*version: //') on $NGINX_PORT"
status=0
"$VENV/bin/python" tests/conformance/compare.py "$OUT" "webd=http://127.0.0.1:$WEBD_PORT" \
    "nginx=http://127.0.0.1:$NGINX_PORT" | tee "$OUT/report.md" || status=$?
exit "$status"
