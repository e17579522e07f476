#!/usr/bin/env bash
# End-to-end proof of the dashboard: a real webd scraped every second by a real
# Prometheus, some traffic, one graceful restart and one crash, then every query of
# dashboards/webd.json (Grafana variables substituted) must return data.
#
#     bash dashboards/e2e.sh            # uses target/debug/webd and webctl (built if missing)
#     WEBD_BIN=... WEBCTL_BIN=... bash dashboards/e2e.sh
#
# Installs Debian's `prometheus` if the server binary is missing (the service is not
# started). Everything listens on 127.0.0.1 and is stopped on exit, also on failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEBD_BIN="${WEBD_BIN:-$REPO/target/debug/webd}"
WEBCTL_BIN="${WEBCTL_BIN:-$REPO/target/debug/webctl}"
TMP="$(mktemp -d)"
PIDS=()

log() { printf '[e2e] %s\n' "$*"; }
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Polls "$@" every 0.2 s for up to $1 seconds.
wait_for() {
  local secs=$1; shift
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then log "timed out: $*"; return 1; fi
    sleep 0.2
  done
}

if ! command -v prometheus >/dev/null; then
  log "installing Debian's prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq prometheus >/dev/null
fi
if [ ! -x "$WEBD_BIN" ] || [ ! -x "$WEBCTL_BIN" ]; then
  (cd "$REPO" && cargo build --workspace -q)
fi

HTTP_PORT=$(free_port)
TLS_PORT=$(free_port)
ADMIN_PORT=$(free_port)
PROM_PORT=$(free_port)
mkdir -p "$TMP/root"
head -c 1024 /dev/urandom >"$TMP/root/1k.bin"
echo '<h1>webd</h1>' >"$TMP/root/index.html"
# A self-signed certificate, so the TLS row has handshakes and an expiry to show.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

log "webd on 127.0.0.1:$HTTP_PORT, admin on 127.0.0.1:$ADMIN_PORT"
"$WEBD_BIN" --listen "127.0.0.1:$HTTP_PORT" --admin "127.0.0.1:$ADMIN_PORT" --root "$TMP/root" \
  --tls-listen "127.0.0.1:$TLS_PORT" --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" --workers 2 --control-socket "$TMP/webd.sock" >"$TMP/webd.log" 2>&1 &
PIDS+=($!)
wait_for 15 curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz"

cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: webd
    static_configs:
      - targets: ["127.0.0.1:$ADMIN_PORT"]
EOF
log "prometheus on 127.0.0.1:$PROM_PORT"
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$TMP/prometheus.log" 2>&1 &
PIDS+=($!)
wait_for 30 curl -sf "http://127.0.0.1:$PROM_PORT/-/ready"
# Traffic before the first scrape would be invisible to rate(): wait for it.
scraped() {
  curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode 'query=up{job="webd"} == 1' |
    grep -q '"result":\[{'
}
wait_for 60 scraped

log "traffic, a graceful listener restart and a worker crash"
for round in 1 2 3; do
  for _ in $(seq 1 50); do
    curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/1k.bin"
    curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/missing"
    curl -sk -o /dev/null --resolve "localhost:$TLS_PORT:127.0.0.1" "https://localhost:$TLS_PORT/1k.bin"
  done
  curl -sk -o /dev/null --tls-max 1.1 "https://127.0.0.1:$TLS_PORT/" || true # a refused handshake
  case $round in
    1) "$WEBCTL_BIN" --control-socket "$TMP/webd.sock" restart listener ;;
    2) # Our own daemon's worker 0, from its status: never a process found by name,
       # which could be another webd's on a shared machine.
       worker0=$("$WEBCTL_BIN" --control-socket "$TMP/webd.sock" --json status |
         python3 -c 'import json,sys; print(next(w["pid"] for w in json.load(sys.stdin)["status"]["workers"] if w["id"] == 0))')
       kill -9 "$worker0" ;;
  esac
  sleep 1.5 # let a few scrapes see this round
done

log "every dashboard query must return data (light traffic continues meanwhile)"
( for _ in $(seq 1 600); do
    curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/1k.bin"
    curl -sk -o /dev/null --resolve "localhost:$TLS_PORT:127.0.0.1" "https://localhost:$TLS_PORT/1k.bin"
    sleep 0.1
  done ) &
PIDS+=($!)
status=0
python3 "$REPO/dashboards/queries.py" --prometheus "http://127.0.0.1:$PROM_PORT" --wait 30 \
  "$REPO/dashboards/webd.json" || status=$?
if [ "$status" -ne 0 ]; then
  log "FAILED (exit $status); webd log tail:"
  tail -n 30 "$TMP/webd.log"
  exit "$status"
fi
log "ok: every query of dashboards/webd.json returned data"
