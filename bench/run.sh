#!/usr/bin/env bash
# bench/run.sh — compare webd with nginx, h2o and lighttpd serving the same static files
# (wrk, loopback only).
#
# Usage:  bench/run.sh                      (works from any cwd)
#         DURATION=3 ROUNDS=1 bench/run.sh  (quick check)
#         WEBD_OLD_BIN=/tmp/webd.old SERVERS="webd webd-old" bench/run.sh   (before/after)
#
# Environment knobs (all optional):
#   WEBD_BIN       path to a webd binary; skips `cargo build --release`
#                  (default: build and use ${CARGO_TARGET_DIR:-target}/release/webd)
#   WEBD_OLD_BIN   a second webd binary, run as server `webd-old` (for before/after figures)
#   SERVERS        space/comma separated subset of: webd webd-old nginx h2o lighttpd
#                                                        (default: webd nginx h2o lighttpd)
#   ROUNDS         rounds per scenario; each round runs every server once         (default 3)
#   ROUNDS_10M     rounds of 10m and tls-10m, whose per-run server CPU is two-moded
#                  (bench/README.md "10 MiB")                   (default ROUNDS, at least 9)
#   DURATION       wrk duration per run, e.g. 10, 10s, 1m                         (default 10s)
#   THREADS        wrk threads                                                    (default 2)
#   SCENARIOS      space/comma separated subset of the scenarios below            (default all)
#   WORKERS        worker processes (threads for h2o) of every server             (default 2)
#   IDLE_CONNS     connections of the idle-10k and keepalive-1k-10k scenarios     (default 10000)
#   RATE           requests per second of the rate-20k scenario                   (default 20000)
#   WARMUP         seconds of untimed keep-alive load per server before the runs;
#                  0 disables                                                     (default 1)
#   READY_TIMEOUT  seconds to wait for each server to answer HTTP                 (default 30)
#   BENCH_OUT      output directory                                    (default bench/out)
#
# Peers: nginx (nginx-light + the brotli_static module), h2o 2.2 and lighttpd 1.4 (+
# mod_openssl), Debian packages, installed with apt if missing. Same files, WORKERS
# workers (nginx worker_processes, h2o num-threads, lighttpd server.max-worker), access logs
# off, keep-alive idle timeout 75 s and at least 100,000 requests per connection on every
# server, each server in its own session (setsid).
#
# Scenarios (wrk --latency, THREADS threads, 127.0.0.1 only):
#   idle-10k          memory per idle connection: a fresh start of each server, WARMUP s of
#                     keep-alive load, then bench/idle_conns.py opens IDLE_CONNS connections
#                     (one GET /1k.bin each, answered) and holds them idle. RSS and PSS
#                     (/proc/PID/smaps_rollup) summed over every process of the server's
#                     session: before, with them open, and 3 s after they close. Reported:
#                     bytes per connection (growth / connections) and how much of the growth
#                     was still held after the close.
#   tls-idle-10k      the same over HTTPS (a full handshake each, then idle): TLS state per
#                     idle connection
#   keepalive-0       64 connections, GET /0.bin (an empty file)
#   keepalive-1k      64 connections, GET /1k.bin
#   close-1k          64 connections, GET /1k.bin with "Connection: close" (a new connection
#                     per request)
#   close-1k-grouped  the same with wrk in the server's scheduling group: the server's
#                     processes and wrk are moved into one cpu cgroup for the run (cgroup v1
#                     cpu or v2 with the cpu controller; the scenario is skipped, '–', where
#                     neither is writable), so the scheduler shares the cores between all of
#                     them as equals instead of between two autogroups (sessions)
#   rate-20k          64 keep-alive connections, GET /1k.bin at a fixed RATE req/s (oha -q,
#                     with --latency-correction, so a stall counts for every request it
#                     delays): latency p50/p99/p99.9 and CPU per request at a load every
#                     server can carry; oha is `cargo install`ed if missing
#   10m               8 connections,  GET /10m.bin
#   keepalive-1k-10k  IDLE_CONNS connections, GET /1k.bin
#   text-64k-br       64 connections, GET /64k.txt with "Accept-Encoding: br, gzip": a compressible
#                     64 KiB text file with .br and .gz sidecars made by the brotli and gzip
#                     tools. webd picks them itself, nginx with brotli_static and gzip_static,
#                     h2o with file.send-compressed. Not lighttpd: its mod_deflate compresses
#                     on the fly into a cache of its own and cannot serve the sidecars.
#   tls-keepalive-1k, tls-close-1k, tls-10m
#                     the same over HTTPS on all four: one self-signed ECDSA P-256
#                     certificate, TLS 1.2 and 1.3 offered, the negotiated protocol and
#                     cipher printed (TLS 1.3 TLS_AES_256_GCM_SHA384 everywhere here);
#                     tls-close-1k is a full handshake per request (wrk does not resume)
#
# Server CPU per request: utime + stime of every process in the server's session (each
# server is started with setsid; /proc/PID/stat field 6), read before and after each wrk
# run, divided by the requests wrk completed. The load generator shares the cores, so this
# is the figure that says what a request costs the server. Processes are never looked up by
# name: only the sessions of the pids this script started. The load generator's own CPU
# (its utime + stime, from the cutime + cstime of the subshell that waited for it) is
# reported beside it, and the sum: on loopback the kernel runs part of one side's TCP work
# in the other's context (a segment's receive in its sender's, a send an ACK releases in
# the ACK's sender's), so only the sum is the whole machine's cost of a request.
#
# Within a round the order rotates (round 1: SERVERS in order, round 2 starts with the
# second, ...; with two servers it alternates) so slow drift of the shared machine does not
# favour one side.
#
# Output: markdown tables on stdout and in $BENCH_OUT/results.md; every figure is the
# median over the rounds (CPU also as min–max, the noise). MB/s is wrk's Transfer/sec in
# MiB/s. p99 comes from wrk's latency distribution (ms). errors = socket errors
# (connect/read/write/timeout) plus responses with status >= 400, summed over all rounds.
# Raw wrk outputs: $BENCH_OUT/wrk-<scenario>-<server>-r<round>.txt; one row per run in
# $BENCH_OUT/runs.tsv and $BENCH_OUT/memory.tsv; server logs in $BENCH_OUT/*.log.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)

ROUNDS=${ROUNDS:-3}
ROUNDS_10M=${ROUNDS_10M:-$((ROUNDS > 9 ? ROUNDS : 9))}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
ALL_SCENARIOS="idle-10k tls-idle-10k keepalive-0 keepalive-1k close-1k close-1k-grouped rate-20k 10m keepalive-1k-10k text-64k-br tls-keepalive-1k tls-close-1k tls-10m"
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
SERVERS=${SERVERS:-webd nginx h2o lighttpd}
WORKERS=${WORKERS:-2}
IDLE_CONNS=${IDLE_CONNS:-10000}
RATE=${RATE:-20000}
WARMUP=${WARMUP:-1}
READY_TIMEOUT=${READY_TIMEOUT:-30}
BENCH_OUT=${BENCH_OUT:-$REPO/bench/out}
WEBD_BIN=${WEBD_BIN:-}
WEBD_OLD_BIN=${WEBD_OLD_BIN:-}
KEEPALIVE_S=75

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

check_int() { # check_int NAME MIN MAX: the variable NAME must be an integer in [MIN, MAX]
    local val=${!1}
    if ! [[ $val =~ ^[0-9]{1,6}$ ]] || ((10#$val < $2 || 10#$val > $3)); then
        die "$1 must be an integer in $2..$3 (got '$val')"
    fi
    printf -v "$1" '%d' "$((10#$val))"
}
check_int ROUNDS 1 100
check_int ROUNDS_10M 1 100
check_int THREADS 1 64
check_int WORKERS 1 256
check_int IDLE_CONNS 64 50000
check_int RATE 100 500000
check_int WARMUP 0 60
check_int READY_TIMEOUT 1 600
[[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "DURATION must look like 10, 10s or 1m (got '$DURATION')"
[[ $DURATION =~ [smh]$ ]] || DURATION=${DURATION}s

# scenario -> connections, path, extra header
declare -A SC_CONNS=([idle-10k]=$IDLE_CONNS [tls-idle-10k]=$IDLE_CONNS [keepalive-0]=64 [keepalive-1k]=64 [close-1k]=64
    [close-1k-grouped]=64 [rate-20k]=64 [10m]=8
    [keepalive-1k-10k]=$IDLE_CONNS [text-64k-br]=64 [tls-keepalive-1k]=64 [tls-close-1k]=64 [tls-10m]=8)
declare -A SC_PATH=([idle-10k]=/1k.bin [tls-idle-10k]=/1k.bin [keepalive-0]=/0.bin [keepalive-1k]=/1k.bin [close-1k]=/1k.bin
    [close-1k-grouped]=/1k.bin [rate-20k]=/1k.bin
    [10m]=/10m.bin [keepalive-1k-10k]=/1k.bin [text-64k-br]=/64k.txt
    [tls-keepalive-1k]=/1k.bin [tls-close-1k]=/1k.bin [tls-10m]=/10m.bin)
declare -A SC_HEADER=([idle-10k]="" [tls-idle-10k]="" [keepalive-0]="" [keepalive-1k]="" [close-1k]="Connection: close" [10m]=""
    [close-1k-grouped]="Connection: close" [rate-20k]=""
    [keepalive-1k-10k]="" [text-64k-br]="Accept-Encoding: br, gzip"
    [tls-keepalive-1k]="" [tls-close-1k]="Connection: close" [tls-10m]="")
read -r -a SCENARIO_LIST <<<"${SCENARIOS//,/ }"
((${#SCENARIO_LIST[@]} > 0)) || die "SCENARIOS is empty"
for s in "${SCENARIO_LIST[@]}"; do
    conns=${SC_CONNS[$s]:-}
    [[ -n $conns ]] || die "unknown scenario '$s' (known: $ALL_SCENARIOS)"
    ((conns >= THREADS)) || die "scenario $s has $conns connections < THREADS=$THREADS"
done
read -r -a SERVER_LIST <<<"${SERVERS//,/ }"
((${#SERVER_LIST[@]} > 0)) || die "SERVERS is empty"
declare -A SEEN=()
for s in "${SERVER_LIST[@]}"; do
    case $s in webd | webd-old | nginx | h2o | lighttpd) ;; *) die "unknown server '$s' (known: webd webd-old nginx h2o lighttpd)" ;; esac
    [[ -z ${SEEN[$s]:-} ]] || die "server '$s' listed twice in SERVERS"
    SEEN[$s]=1
done
has_server() { [[ -n ${SEEN[$1]:-} ]]; }
if has_server webd-old; then
    [[ -n $WEBD_OLD_BIN && -x $WEBD_OLD_BIN ]] || die "SERVERS has webd-old: set WEBD_OLD_BIN to an executable webd"
fi

# What each server can do with the same files (see the header).
can_tls() { true; }
can_br() { [[ $1 != lighttpd ]]; }
runs_scenario() { # runs_scenario SERVER SCENARIO
    case $2 in
        tls-*) can_tls "$1" ;;
        text-64k-br) can_br "$1" ;;
        close-1k-grouped) can_group ;;
        *) true ;;
    esac
}

# 10,000 connections need descriptors: for wrk, the client and the servers (inherited).
nofile=$((IDLE_CONNS * 2 + 4096))
if (($(ulimit -Hn) < nofile)); then ulimit -Hn "$nofile" 2>/dev/null || true; fi
ulimit -Sn "$(($(ulimit -Hn) < nofile ? $(ulimit -Hn) : nofile))"
(($(ulimit -Sn) >= IDLE_CONNS + 1024)) || die "RLIMIT_NOFILE is $(ulimit -Sn), need $((IDLE_CONNS + 1024)) for IDLE_CONNS=$IDLE_CONNS"

# ---------------------------------------------------------------- cleanup (set up first)
TMP=""
declare -A PID=() PORT_OF=() TLS_PORT_OF=()

# Stop a server started with setsid (so pid == process group id): SIGTERM to the leader
# (every server here shuts its own children down), wait up to 10 s, then SIGKILL whatever
# is left in its process group.
stop_group() {
    local name=$1 pid=$2 i
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop within 10 s, sending SIGKILL"
        fi
    fi
    # Anything left in the group (the leader, or children orphaned by a leader that died
    # earlier) is killed now; the group id cannot be reused while members exist.
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? s
    trap - EXIT INT TERM
    for s in "${!PID[@]}"; do stop_group "$s" "${PID[$s]}"; done
    if [[ -n $TMP && -d $TMP ]]; then
        for s in nginx h2o lighttpd; do
            [[ -f $TMP/$s/error.log ]] && cp -f "$TMP/$s/error.log" "$BENCH_OUT/$s-error.log" 2>/dev/null
        done
        rm -rf -- "$TMP"
    fi
    ((rc == 0)) || log "failed (exit $rc); logs in $BENCH_OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- 1. tools and webd
SUDO=""
((EUID == 0)) || SUDO=sudo
need_pkgs=()
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v brotli >/dev/null 2>&1 || need_pkgs+=(brotli)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
BROTLI_MODULE=/usr/lib/nginx/modules/ngx_http_brotli_static_module.so
H2O=$(command -v h2o 2>/dev/null || echo /usr/bin/h2o)
LIGHTTPD=$(command -v lighttpd 2>/dev/null || echo /usr/sbin/lighttpd)
LIGHTTPD_MODULES=/usr/lib/lighttpd
if has_server nginx; then
    [[ -x $NGINX ]] || need_pkgs+=(nginx-light)
    [[ -f $BROTLI_MODULE ]] || need_pkgs+=(libnginx-mod-http-brotli-static)
fi
has_server h2o && { [[ -x $H2O ]] || need_pkgs+=(h2o); }
if has_server lighttpd; then
    [[ -x $LIGHTTPD ]] || need_pkgs+=(lighttpd)
    [[ -f $LIGHTTPD_MODULES/mod_openssl.so ]] || need_pkgs+=(lighttpd-mod-openssl)
fi
if ((${#need_pkgs[@]} > 0)); then
    log "installing ${need_pkgs[*]} with apt"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # The packages' own services are not wanted (and policy-rc.d may forbid them anyway).
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need_pkgs[@]}" >&2
    NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
    H2O=$(command -v h2o 2>/dev/null || echo /usr/bin/h2o)
    LIGHTTPD=$(command -v lighttpd 2>/dev/null || echo /usr/sbin/lighttpd)
fi
command -v wrk >/dev/null 2>&1 || die "wrk not found after install"
OHA=""
if [[ " ${SCENARIO_LIST[*]} " == *" rate-20k "* ]]; then
    OHA=$(command -v oha 2>/dev/null || echo "$HOME/.cargo/bin/oha")
    if [[ ! -x $OHA ]]; then
        log "installing oha (cargo install oha --locked) for rate-20k"
        cargo install oha --locked >&2 || die "cargo install oha failed; drop rate-20k from SCENARIOS"
        OHA=$HOME/.cargo/bin/oha
    fi
fi
if has_server nginx; then
    [[ -x $NGINX ]] || die "nginx not found after install"
    [[ -f $BROTLI_MODULE ]] || die "nginx's brotli_static module ($BROTLI_MODULE) not found after install"
fi
has_server h2o && { [[ -x $H2O ]] || die "h2o not found after install"; }
if has_server lighttpd; then
    [[ -x $LIGHTTPD ]] || die "lighttpd not found after install"
    [[ -f $LIGHTTPD_MODULES/mod_openssl.so ]] || die "lighttpd's mod_openssl not found after install"
fi

if has_server webd; then
    if [[ -n $WEBD_BIN ]]; then
        [[ -x $WEBD_BIN ]] || die "WEBD_BIN=$WEBD_BIN is not an executable file"
        WEBD_BIN=$(cd "$(dirname "$WEBD_BIN")" && pwd)/$(basename "$WEBD_BIN")
        log "using WEBD_BIN=$WEBD_BIN (no build)"
    else
        log "building webd (cargo build --release)"
        cargo build --release >&2 ||
            die "cargo build --release failed; set WEBD_BIN=/path/to/webd to benchmark an existing binary"
        target_dir=${CARGO_TARGET_DIR:-target}
        [[ $target_dir = /* ]] || target_dir=$REPO/$target_dir
        WEBD_BIN=$target_dir/release/webd
        [[ -x $WEBD_BIN ]] || die "build succeeded but $WEBD_BIN is missing"
    fi
fi
[[ -z $WEBD_OLD_BIN ]] || WEBD_OLD_BIN=$(cd "$(dirname "$WEBD_OLD_BIN")" && pwd)/$(basename "$WEBD_OLD_BIN")

version_of() {
    case $1 in
        webd) echo "webd, tree $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+changes') ($WEBD_BIN)" ;;
        webd-old) echo "webd-old ($WEBD_OLD_BIN)" ;;
        nginx) "$NGINX" -v 2>&1 | sed 's/.*version: //' ;;
        h2o) "$H2O" --version 2>&1 | head -n 1 ;;
        lighttpd) "$LIGHTTPD" -v 2>&1 | head -n 1 | sed 's/ - .*//' ;;
    esac
}

# ---------------------------------------------------------------- 2. docroot
mkdir -p "$BENCH_OUT"
rm -f "$BENCH_OUT"/wrk-*.txt "$BENCH_OUT"/wrk-*.txt.* "$BENCH_OUT/runs.tsv" "$BENCH_OUT/memory.tsv" "$BENCH_OUT/results.md" \
    "$BENCH_OUT"/*.log
TMP=$(mktemp -d "${TMPDIR:-/tmp}/webd-bench.XXXXXX")
ROOT=$TMP/root
mkdir -p "$ROOT" "$TMP/nginx" "$TMP/h2o" "$TMP/lighttpd"
: >"$ROOT/0.bin"
head -c 1024 /dev/urandom >"$ROOT/1k.bin"
head -c $((10 * 1024 * 1024)) /dev/urandom >"$ROOT/10m.bin"
# Compressible text: HTML-like lines with varying numbers.
awk 'BEGIN { for (i = 0; i < 2000; i++) printf "<li class=\"item\">entry %d of the index, see page %d</li>\n", i, i * 7 % 13 }' \
    >"$TMP/text"
head -c 65536 "$TMP/text" >"$ROOT/64k.txt"
brotli -k -q 11 "$ROOT/64k.txt"
gzip -k -9 "$ROOT/64k.txt"
chmod 755 "$TMP" "$ROOT"
# One certificate for every server (nginx workers run as root here, so 0600 is fine).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null ||
    die "openssl could not make the test certificate"
chmod 644 "$ROOT"/*.bin "$ROOT"/64k.txt* "$TMP/key.pem"

# ---------------------------------------------------------------- 3. servers
# A free port below the ephemeral range (so wrk's client sockets never collide with it),
# not currently listening according to /proc/net/tcp{,6}.
used_ports() {
    # local_address is "HEX_IP:HEX_PORT"; state 0A = LISTEN
    awk 'NR > 1 && $4 == "0A" { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        while read -r hex; do printf '%d\n' "0x$hex"; done
}
declare -A TAKEN=()
PORT=""
pick_port() { # sets PORT
    local p i listening
    listening=$'\n'$(used_ports)$'\n'
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 12000))
        [[ -z ${TAKEN[$p]:-} && $listening != *$'\n'$p$'\n'* ]] || continue
        TAKEN[$p]=1
        PORT=$p
        return 0
    done
    die "no free port found"
}

# wait_http NAME PID URL: poll until URL answers 200, the process dies, or READY_TIMEOUT.
wait_http() {
    local name=$1 pid=$2 url=$3 code deadline
    deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        code=$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "$url" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    log "$name did not answer 200 on $url within ${READY_TIMEOUT}s (last code: ${code:-none})"
    return 1
}

# Check that a server returns the exact bytes of every file it is measured with.
verify_content() {
    local name=$1 port=${PORT_OF[$1]} tls_port=${TLS_PORT_OF[$1]} f
    for f in 0.bin 1k.bin 10m.bin; do
        curl -sf --max-time 10 "http://127.0.0.1:$port/$f" | cmp -s - "$ROOT/$f" ||
            die "$name served wrong content for /$f"
    done
    if can_br "$name"; then
        curl -sf --max-time 10 -H 'Accept-Encoding: br, gzip' "http://127.0.0.1:$port/64k.txt" |
            cmp -s - "$ROOT/64k.txt.br" || die "$name did not serve the .br sidecar of /64k.txt"
    fi
    if can_tls "$name"; then
        for f in 1k.bin 10m.bin; do
            curl -sfk --max-time 10 "https://127.0.0.1:$tls_port/$f" | cmp -s - "$ROOT/$f" ||
                die "$name served wrong content for https /$f"
        done
        printf '%s: %s\n' "$name" "$(openssl s_client -connect "127.0.0.1:$tls_port" -servername localhost </dev/null 2>/dev/null |
            awk '/^New, / { sub(/^New, /, ""); print; exit }')" >>"$TMP/tls-negotiated"
    fi
}

write_nginx_conf() {
    local port=$1 tls_port=$2
    cat >"$TMP/nginx/nginx.conf" <<EOF
# generated by bench/run.sh
load_module $BROTLI_MODULE;
user root;
worker_processes $WORKERS;
worker_rlimit_nofile $((IDLE_CONNS * 2 + 1024));
daemon off;
master_process on;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events {
    worker_connections $((IDLE_CONNS + 1024));
}
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout ${KEEPALIVE_S}s;
    keepalive_requests 100000;
    default_type application/octet-stream;
    types { text/plain txt; }
    gzip_static on;
    brotli_static on;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305;
    ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;
    server {
        listen 127.0.0.1:$port backlog=4096;
        listen 127.0.0.1:$tls_port ssl backlog=4096;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        root $ROOT;
    }
}
EOF
}

# h2o: no access-log directive = no access log; file.send-compressed serves .br/.gz sidecars.
write_h2o_conf() {
    local port=$1 tls_port=$2
    cat >"$TMP/h2o/h2o.conf" <<EOF
# generated by bench/run.sh
user: root
num-threads: $WORKERS
max-connections: $((IDLE_CONNS + 1024))
http1-request-timeout: $KEEPALIVE_S
pid-file: $TMP/h2o/h2o.pid
error-log: $TMP/h2o/error.log
listen:
  host: 127.0.0.1
  port: $port
listen:
  host: 127.0.0.1
  port: $tls_port
  ssl:
    certificate-file: $TMP/cert.pem
    key-file: $TMP/key.pem
    minimum-version: TLSv1.2
    cipher-suite: ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305
file.send-compressed: ON
file.mime.addtypes:
  text/plain: .txt
  application/octet-stream: .bin
hosts:
  default:
    paths:
      /:
        file.dir: $ROOT
EOF
}

# lighttpd: no mod_accesslog = no access log; server.max-worker forks the workers.
write_lighttpd_conf() {
    local port=$1 tls_port=$2
    cat >"$TMP/lighttpd/lighttpd.conf" <<EOF
# generated by bench/run.sh
server.modules = ("mod_openssl")
server.document-root = "$ROOT"
server.bind = "127.0.0.1"
server.port = $port
server.max-worker = $WORKERS
server.max-fds = $((IDLE_CONNS * 2 + 1024))
server.max-connections = $((IDLE_CONNS + 1024))
server.max-keep-alive-requests = 100000
server.max-keep-alive-idle = $KEEPALIVE_S
server.listen-backlog = 4096
server.errorlog = "$TMP/lighttpd/error.log"
server.pid-file = "$TMP/lighttpd/lighttpd.pid"
mimetype.assign = (".txt" => "text/plain", "" => "application/octet-stream")
\$SERVER["socket"] == "127.0.0.1:$tls_port" {
    ssl.engine = "enable"
    ssl.pemfile = "$TMP/cert.pem"
    ssl.privkey = "$TMP/key.pem"
    ssl.openssl.ssl-conf-cmd = ("MinProtocol" => "TLSv1.2", "Ciphersuites" => "TLS_AES_256_GCM_SHA384",
        "CipherString" => "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305")
}
EOF
}

# launch NAME: writes the config and starts the server in its own session; sets PID[NAME].
launch() {
    local name=$1 port=${PORT_OF[$1]} tls_port=${TLS_PORT_OF[$1]} bin
    case $name in
        webd | webd-old)
            bin=$WEBD_BIN
            [[ $name == webd-old ]] && bin=$WEBD_OLD_BIN
            rm -f "$TMP/$name.sock"
            setsid "$bin" --listen "127.0.0.1:$port" --root "$ROOT" --workers "$WORKERS" \
                --tls-listen "127.0.0.1:$tls_port" --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" \
                --keepalive-timeout $((KEEPALIVE_S * 1000)) --max-requests-per-connection 100000 \
                --max-connections $((IDLE_CONNS + 1024)) \
                --admin off --control-socket "$TMP/$name.sock" \
                </dev/null >>"$BENCH_OUT/$name.log" 2>&1 &
            ;;
        nginx)
            write_nginx_conf "$port" "$tls_port"
            if ! "$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"; then
                tail -n 5 "$TMP/nginx/error.log" >&2 || true
                die "nginx rejected the generated config"
            fi
            setsid "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
                </dev/null >>"$BENCH_OUT/nginx.log" 2>&1 &
            ;;
        h2o)
            write_h2o_conf "$port" "$tls_port"
            "$H2O" -t -c "$TMP/h2o/h2o.conf" >"$TMP/h2o/check.log" 2>&1 ||
                { tail -n 5 "$TMP/h2o/check.log" >&2; die "h2o rejected the generated config"; }
            setsid "$H2O" -c "$TMP/h2o/h2o.conf" </dev/null >>"$BENCH_OUT/h2o.log" 2>&1 &
            ;;
        lighttpd)
            write_lighttpd_conf "$port" "$tls_port"
            "$LIGHTTPD" -tt -m "$LIGHTTPD_MODULES" -f "$TMP/lighttpd/lighttpd.conf" >"$TMP/lighttpd/check.log" 2>&1 ||
                { tail -n 5 "$TMP/lighttpd/check.log" >&2; die "lighttpd rejected the generated config"; }
            setsid "$LIGHTTPD" -D -m "$LIGHTTPD_MODULES" -f "$TMP/lighttpd/lighttpd.conf" \
                </dev/null >>"$BENCH_OUT/lighttpd.log" 2>&1 &
            ;;
    esac
    PID[$name]=$!
}

# start_server NAME: fresh ports, start, wait until it serves; a few attempts.
start_server() {
    local name=$1 attempt
    for ((attempt = 1; attempt <= 3; attempt++)); do
        pick_port
        PORT_OF[$name]=$PORT
        pick_port
        TLS_PORT_OF[$name]=$PORT
        launch "$name"
        if wait_http "$name" "${PID[$name]}" "http://127.0.0.1:${PORT_OF[$name]}/1k.bin"; then
            log "$name up on 127.0.0.1:${PORT_OF[$name]} and :${TLS_PORT_OF[$name]} (pid ${PID[$name]})"
            return 0
        fi
        log "$name failed to start (attempt $attempt); last log lines:"
        tail -n 10 "$BENCH_OUT/$name.log" "$TMP/$name/error.log" >&2 2>/dev/null || true
        stop_group "$name" "${PID[$name]}"
        unset "PID[$name]"
    done
    die "$name did not start; see $BENCH_OUT/$name.log"
}

restart_server() {
    stop_group "$1" "${PID[$1]}"
    unset "PID[$1]"
    start_server "$1"
}

: >"$TMP/tls-negotiated"
for server in "${SERVER_LIST[@]}"; do
    start_server "$server"
    verify_content "$server"
done
log "TLS negotiated: $(paste -sd ';' "$TMP/tls-negotiated")"

# ---------------------------------------------------------------- 4. load
# session_pids SID: every process in session SID (a server we started with setsid, so its
# pid is the session id): never a process found by name.
session_pids() {
    local sid=$1 f line rest
    local -a fields
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        rest=${line##*) } # after the command name, which may contain spaces and parentheses
        read -r -a fields <<<"$rest"
        # fields from state (stat field 3): session is field 6
        [[ ${fields[3]:-} == "$sid" ]] || continue
        f=${f#/proc/}
        echo "${f%/stat}"
    done
}

# cpu_ticks SID: utime + stime (clock ticks) of every process in session SID.
cpu_ticks() {
    local sid=$1 pid line rest total=0
    local -a fields
    for pid in $(session_pids "$sid"); do
        { read -r line <"/proc/$pid/stat"; } 2>/dev/null || continue
        rest=${line##*) }
        read -r -a fields <<<"$rest"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# with_client_ticks FILE CMD...: runs CMD in a subshell, then writes to FILE the clock ticks
# (utime + stime) its children used: the load generator's CPU, measured as the server's is.
with_client_ticks() {
    local file=$1
    shift
    (
        rc=0
        "$@" || rc=$?
        read -r line <"/proc/$BASHPID/stat"
        read -r -a fields <<<"${line##*) }"
        echo $((fields[13] + fields[14])) >"$file" # cutime + cstime: waited-for children
        exit "$rc"
    )
}

# rounds_of SCENARIO: how many rounds it runs.
rounds_of() {
    case $1 in 10m | tls-10m) echo "$ROUNDS_10M" ;; *) echo "$ROUNDS" ;; esac
}

# per_request TICKS FILE: TICKS as µs per request wrk (or oha) completed in FILE.
per_request() {
    awk -v t="$1" -v hz="$CLK_TCK" -v n="$(requests_of "$2")" \
        'BEGIN { if (n + 0 > 0 && t != "") printf "%.1f", t / hz / n * 1e6; else print "NA" }'
}

# memory_kb SID -> "RSS_KB PSS_KB" summed over every process in session SID.
memory_kb() {
    local sid=$1 pid rss=0 pss=0 key value _
    for pid in $(session_pids "$sid"); do
        while read -r key value _; do
            case $key in
                Rss:) rss=$((rss + value)) ;;
                Pss:) pss=$((pss + value)) ;;
            esac
        done 2>/dev/null <"/proc/$pid/smaps_rollup" || true
    done
    echo "$rss $pss"
}

# requests_of FILE: the requests wrk completed ("N requests in ...")
requests_of() { awk '/ requests in / { print $1; exit }' "$1"; }

# parse_wrk FILE -> "rps mbps p99ms errors detail" (fields "NA" when absent)
parse_wrk() {
    awk '
    function ms(v,  n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000
        if (u == "ms") return n
        if (u == "s")  return n * 1000
        if (u == "m")  return n * 60000
        if (u == "h")  return n * 3600000
        return "NA"
    }
    function mib(v,  n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "B")  return n / 1048576
        if (u == "KB") return n / 1024
        if (u == "MB") return n
        if (u == "GB") return n * 1024
        if (u == "TB") return n * 1048576
        return "NA"
    }
    BEGIN { rps = "NA"; mbps = "NA"; p99 = "NA"; c = r = w = t = n = 0 }
    /^Requests\/sec:/ { rps = ($2 ~ /^[0-9.]+$/) ? $2 : "NA" }
    /^Transfer\/sec:/ { mbps = mib($2) }
    $1 == "99%" && NF == 2 { p99 = ms($2) }
    /Socket errors:/ {
        for (i = 1; i <= NF; i++) {
            v = $(i + 1); gsub(/,/, "", v)
            if ($i == "connect") c = v; else if ($i == "read") r = v
            else if ($i == "write") w = v; else if ($i == "timeout") t = v
        }
    }
    /Non-2xx or 3xx responses:/ { n = $NF }
    END {
        printf "%s %s %s %d connect=%d,read=%d,write=%d,timeout=%d,status>=400=%d\n",
            rps, mbps, p99, c + r + w + t + n, c, r, w, t, n
    }' "$1"
}

# median of the numeric arguments ("NA" when none)
median() {
    printf '%s\n' "$@" | { grep -E '^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$' || true; } | sort -g |
        awk '{ a[NR] = $1 } END {
            if (NR == 0) { print "NA"; exit }
            if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2
        }'
}

# spread FORMAT VALUES...: "min–max" of the numeric values (one value: itself)
spread() {
    local f=$1
    shift
    printf '%s\n' "$@" | { grep -E '^-?[0-9]+(\.[0-9]+)?$' || true; } | sort -g |
        awk -v f="$f" '{ a[NR] = $1 } END {
            if (NR == 0) { print "n/a"; exit }
            if (NR == 1) printf f "\n", a[1]; else printf f "–" f "\n", a[1], a[NR]
        }'
}

fmt() { # fmt PRINTF-FORMAT VALUE
    # shellcheck disable=SC2059 # the format is always a literal from this script
    if [[ $2 == NA ]]; then printf 'n/a'; else LC_ALL=C printf "$1" "$2"; fi
}

# A cpu cgroup directory new scheduling groups can be made in ('' if none): cgroup v1's cpu
# hierarchy, or v2 with the cpu controller.
cpu_cgroup_root() {
    if [[ -w /sys/fs/cgroup/cpu/cgroup.procs ]]; then
        echo /sys/fs/cgroup/cpu
    elif [[ -w /sys/fs/cgroup/cgroup.procs ]] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        echo /sys/fs/cgroup
    fi
}
CPU_CGROUP=$(cpu_cgroup_root)
can_group() { [[ -n $CPU_CGROUP ]]; }

# enter_group SERVER: a cpu cgroup made for one close-1k-grouped run, the server's processes
# moved into it (wrk joins it as it starts); sets GROUP. leave_group puts them back.
GROUP=""
enter_group() {
    local pid
    GROUP=$CPU_CGROUP/webd-bench-$$-$1
    mkdir -p "$GROUP" || die "cannot make the cgroup $GROUP"
    for pid in $(session_pids "${PID[$1]}"); do echo "$pid" >"$GROUP/cgroup.procs" 2>/dev/null || true; done
}
leave_group() {
    local pid
    while read -r pid; do echo "$pid" >"$CPU_CGROUP/cgroup.procs" 2>/dev/null || true; done <"$GROUP/cgroup.procs"
    rmdir "$GROUP" 2>/dev/null || log "cgroup $GROUP not removed"
    GROUP=""
}

# run_oha SERVER DURATION OUTFILE: rate-20k; writes a wrk-like summary to OUTFILE (see parse_oha).
run_oha() {
    local server=$1 dur=$2 outfile=$3
    with_client_ticks "$outfile.client" "$OHA" -z "$dur" -q "$RATE" -c 64 --no-tui --latency-correction --output-format json \
        "http://127.0.0.1:${PORT_OF[$server]}/1k.bin" >"$outfile.json" 2>"$outfile.err" ||
        log "oha failed for $server/rate-20k (see $outfile.err)"
    # The same lines parse_wrk and requests_of read, plus the extra percentiles.
    python3 - "$outfile.json" >"$outfile" <<'PY' || log "oha output unreadable for $server (see $outfile.json)"
import json, sys
r = json.load(open(sys.argv[1]))
ok = sum(n for code, n in r.get("statusCodeDistribution", {}).items() if int(code) < 400)
bad = sum(n for code, n in r.get("statusCodeDistribution", {}).items() if int(code) >= 400)
# Requests in flight when oha's duration ends are its own, not the server's errors.
errors = sum(n for what, n in r.get("errorDistribution", {}).items() if what != "aborted due to deadline")
p = r["latencyPercentiles"]
ms = lambda v: "NA" if v is None else "%.3fms" % (v * 1000)
print("%d requests in %.1fs" % (ok + bad, r["summary"]["total"]))
print("Requests/sec: %.1f" % r["summary"]["requestsPerSec"])
print("Transfer/sec: %.2fMB" % (r["summary"].get("sizePerSec", 0) / 1048576))
print("50% " + ms(p.get("p50")))
print("99% " + ms(p.get("p99")))
print("99.9% " + ms(p.get("p99.9")))
print("Socket errors: connect 0, read %d, write 0, timeout 0" % errors)
print("Non-2xx or 3xx responses: %d" % bad)
PY
}

# percentile_of FILE LABEL: a latency line of run_oha's summary, in ms ("NA" when absent).
percentile_of() { awk -v l="$2" '$1 == l { v = $2; sub(/ms$/, "", v); print v; found = 1; exit } END { if (!found) print "NA" }' "$1"; }

# run_wrk SERVER SCENARIO DURATION OUTFILE
run_wrk() {
    local server=$1 sc=$2 dur=$3 outfile=$4 port=${PORT_OF[$1]} pid=${PID[$1]} scheme=http
    if [[ $sc == tls-* ]]; then
        scheme=https
        port=${TLS_PORT_OF[$server]}
    fi
    kill -0 "$pid" 2>/dev/null || die "$server (pid $pid) is no longer running"
    if [[ $sc == rate-20k ]]; then
        run_oha "$server" "$dur" "$outfile"
    else
        local args=(-t "$THREADS" -c "${SC_CONNS[$sc]}" -d "$dur" --latency) launcher=()
        # 10,000 connections take a while to open: give each request more than wrk's 2 s.
        ((SC_CONNS[$sc] > 1000)) && args+=(--timeout 10s)
        [[ -n ${SC_HEADER[$sc]} ]] && args+=(-H "${SC_HEADER[$sc]}")
        args+=("$scheme://127.0.0.1:$port${SC_PATH[$sc]}")
        if [[ $sc == close-1k-grouped ]]; then
            enter_group "$server"
            # shellcheck disable=SC2016 # $$ and $1 are the inner shell's
            launcher=(bash -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' _ "$GROUP")
        fi
        if ! with_client_ticks "$outfile.client" "${launcher[@]}" wrk "${args[@]}" >"$outfile" 2>&1; then
            log "wrk failed for $server/$sc (see $outfile)"
        fi
        [[ -z $GROUP ]] || leave_group
    fi
    kill -0 "$pid" 2>/dev/null || die "$server (pid $pid) exited during the $sc run (see $outfile)"
}

warm_up() {
    ((WARMUP > 0)) || return 0
    log "warm-up: $1 ${WARMUP}s"
    run_wrk "$1" keepalive-1k "${WARMUP}s" "$TMP/warmup-$1.txt"
}

# measure_idle SERVER ROUND SCENARIO: a fresh server, warmed up; RSS/PSS before, with IDLE_CONNS
# idle connections held by bench/idle_conns.py, and 3 s after they closed. One memory.tsv row.
measure_idle() {
    local server=$1 round=$2 sc=$3 sid before open after opened failed still line port tls=""
    restart_server "$server"
    port=${PORT_OF[$server]}
    warm_up "$server"
    sid=${PID[$server]}
    sleep 1
    before=$(memory_kb "$sid")
    if [[ $sc == tls-* ]]; then
        port=${TLS_PORT_OF[$server]}
        tls=tls
    fi
    # shellcheck disable=SC2086 # $tls is empty or one word
    coproc IDLE { exec python3 "$REPO/bench/idle_conns.py" 127.0.0.1 "$port" "$IDLE_CONNS" /1k.bin 60 $tls; }
    local idle_pid=$IDLE_PID
    line=""
    read -r -t 70 line <&"${IDLE[0]}" || true
    [[ $line == open\ * ]] || die "idle_conns.py did not report (got '$line')"
    read -r _ opened _ failed <<<"$line"
    sleep 1 # let the workers settle after the last answers
    open=$(memory_kb "$sid")
    echo close >&"${IDLE[1]}"
    line=""
    read -r -t 70 line <&"${IDLE[0]}" || true
    still=${line#still-open }
    wait "$idle_pid" 2>/dev/null || true
    sleep 3
    after=$(memory_kb "$sid")
    kill -0 "${PID[$server]}" 2>/dev/null || die "$server exited during $sc"
    read -r rss0 pss0 <<<"$before"
    read -r rss1 pss1 <<<"$open"
    read -r rss2 pss2 <<<"$after"
    printf '%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$server" "$round" "$opened" "$failed" "${still:-NA}" \
        "$rss0" "$rss1" "$rss2" "$pss0" "$pss1" "$pss2" >>"$BENCH_OUT/memory.tsv"
    log "  $server: $opened open ($failed failed, ${still:-?} still open at the close); RSS KB $rss0 -> $rss1 -> $rss2, PSS KB $pss0 -> $pss1 -> $pss2"
}

for server in "${SERVER_LIST[@]}"; do warm_up "$server"; done

declare -A RPS MBPS P99 P50 P999 ERRS CPU CLIENT_CPU TOTAL_CPU MEM_RSS MEM_PSS MEM_KEPT MEM_AFTER MEM_BEFORE MEM_OPEN
printf 'scenario\tround\tserver\treq_per_s\tMiB_per_s\tp99_ms\tcpu_us_per_req\terrors\terror_detail\tclient_cpu_us_per_req\n' >"$BENCH_OUT/runs.tsv"
printf 'scenario\tserver\tround\topened\tfailed\tstill_open\trss_before_kb\trss_open_kb\trss_after_kb\tpss_before_kb\tpss_open_kb\tpss_after_kb\n' >"$BENCH_OUT/memory.tsv"
n_servers=${#SERVER_LIST[@]}
for sc in "${SCENARIO_LIST[@]}"; do
    for server in "${SERVER_LIST[@]}"; do
        RPS[$sc,$server]=""; MBPS[$sc,$server]=""; P99[$sc,$server]=""; ERRS[$sc,$server]=0; CPU[$sc,$server]=""
        CLIENT_CPU[$sc,$server]=""; TOTAL_CPU[$sc,$server]=""
        P50[$sc,$server]=""; P999[$sc,$server]=""
        MEM_RSS[$sc,$server]=""; MEM_PSS[$sc,$server]=""; MEM_KEPT[$sc,$server]=""; MEM_AFTER[$sc,$server]=""
        MEM_BEFORE[$sc,$server]=""; MEM_OPEN[$sc,$server]=""
    done
    rounds=$(rounds_of "$sc")
    for ((round = 1; round <= rounds; round++)); do
        order=()
        for ((i = 0; i < n_servers; i++)); do order+=("${SERVER_LIST[(i + round - 1) % n_servers]}"); done
        for server in "${order[@]}"; do
            runs_scenario "$server" "$sc" || continue
            log "$sc round $round/$rounds: $server (${SC_CONNS[$sc]} conns)"
            if [[ $sc == *idle-10k ]]; then
                measure_idle "$server" "$round" "$sc"
                read -r _ _ _ opened _ _ rss0 rss1 rss2 pss0 pss1 pss2 < <(tail -n 1 "$BENCH_OUT/memory.tsv")
                MEM_RSS[$sc,$server]+=" $(awk -v a="$rss0" -v b="$rss1" -v n="$opened" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1024 / n; else print "NA" }')"
                MEM_PSS[$sc,$server]+=" $(awk -v a="$pss0" -v b="$pss1" -v n="$opened" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1024 / n; else print "NA" }')"
                MEM_KEPT[$sc,$server]+=" $(awk -v a="$rss0" -v b="$rss1" -v c="$rss2" 'BEGIN { if (b > a) printf "%.0f", (c - a) * 100 / (b - a); else print "NA" }')"
                MEM_BEFORE[$sc,$server]+=" $rss0"
                MEM_OPEN[$sc,$server]+=" $rss1"
                MEM_AFTER[$sc,$server]+=" $rss2"
                continue
            fi
            out=$BENCH_OUT/wrk-$sc-$server-r$round.txt
            ticks_before=$(cpu_ticks "${PID[$server]}")
            run_wrk "$server" "$sc" "$DURATION" "$out"
            ticks_after=$(cpu_ticks "${PID[$server]}")
            read -r rps mbps p99 errs detail < <(parse_wrk "$out")
            cpu=$(per_request $((ticks_after - ticks_before)) "$out")
            client_cpu=$(per_request "$(cat "$out.client" 2>/dev/null)" "$out")
            total_cpu=$(awk -v a="$cpu" -v b="$client_cpu" 'BEGIN { if (a == "NA" || b == "NA") print "NA"; else printf "%.1f", a + b }')
            log "  $server: req/s=$rps MiB/s=$mbps p99=${p99}ms cpu/req=${cpu}us (client ${client_cpu}us) errors=$errs ($detail)"
            printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$round" "$server" "$rps" "$mbps" "$p99" "$cpu" \
                "$errs" "$detail" "$client_cpu" >>"$BENCH_OUT/runs.tsv"
            CPU[$sc,$server]+=" $cpu"
            CLIENT_CPU[$sc,$server]+=" $client_cpu"
            TOTAL_CPU[$sc,$server]+=" $total_cpu"
            RPS[$sc,$server]+=" $rps"
            MBPS[$sc,$server]+=" $mbps"
            P99[$sc,$server]+=" $p99"
            if [[ $sc == rate-* ]]; then
                P50[$sc,$server]+=" $(percentile_of "$out" 50%)"
                P999[$sc,$server]+=" $(percentile_of "$out" 99.9%)"
            fi
            prev=${ERRS[$sc,$server]}
            ERRS[$sc,$server]=$((prev + errs))
        done
    done
done

# ---------------------------------------------------------------- 5. report
# cpu_table TITLE ARRAY: one row per scenario, one column per server, of the named array's
# per-round figures (median, min–max).
cpu_table() {
    local sc server row header="| $1 |" rule="|---|"
    local -n figures=$2
    for server in "${SERVER_LIST[@]}"; do header+=" $server |"; rule+="---:|"; done
    echo "$header"
    echo "$rule"
    for sc in "${SCENARIO_LIST[@]}"; do
        [[ $sc == *idle-10k ]] && continue
        row="| $sc |"
        for server in "${SERVER_LIST[@]}"; do
            # shellcheck disable=SC2086 # the space-separated per-round list splits into values
            if [[ -z ${figures[$sc,$server]// /} ]]; then row+=" – |"; continue; fi
            # shellcheck disable=SC2086
            row+=" $(fmt '%.1f' "$(median ${figures[$sc,$server]})") ($(spread '%.1f' ${figures[$sc,$server]})) |"
        done
        echo "$row"
    done
}

# shellcheck disable=SC2086 # word splitting of the space-separated per-round lists is intended
{
    echo "## $(IFS=,; echo "${SERVER_LIST[*]}" | sed "s/,/, /g")"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, rounds=$ROUNDS (10m: $ROUNDS_10M), duration=$DURATION," \
        "wrk threads=$THREADS, workers=$WORKERS"
    for server in "${SERVER_LIST[@]}"; do echo "- $server: $(version_of "$server")"; done
    echo
    cpu_table "µs CPU per request (median; min–max)" CPU
    for sc in "${SCENARIO_LIST[@]}"; do
        [[ $sc == *idle-10k ]] || continue
        row1="| $sc: memory per idle connection, RSS growth / connections (B) |"
        row2="| $sc: same, PSS (B) |"
        row3="| $sc: RSS before → with them → 3 s after close (MB) |"
        row4="| $sc: growth still held after close |"
        for server in "${SERVER_LIST[@]}"; do
            if [[ -z ${MEM_RSS[$sc,$server]// /} ]]; then row1+=" – |"; row2+=" – |"; row3+=" – |"; row4+=" – |"; continue; fi
            row1+=" $(fmt '%.0f' "$(median ${MEM_RSS[$sc,$server]})") ($(spread '%.0f' ${MEM_RSS[$sc,$server]})) |"
            row2+=" $(fmt '%.0f' "$(median ${MEM_PSS[$sc,$server]})") |"
            row3+=" $(fmt '%.1f' "$(median ${MEM_BEFORE[$sc,$server]} | awk '{ print $1 / 1024 }')") → $(fmt '%.1f' "$(median ${MEM_OPEN[$sc,$server]} | awk '{ print $1 / 1024 }')") → $(fmt '%.1f' "$(median ${MEM_AFTER[$sc,$server]} | awk '{ print $1 / 1024 }')") |"
            row4+=" $(fmt '%.0f' "$(median ${MEM_KEPT[$sc,$server]})") % |"
        done
        printf '%s\n' "$row1" "$row2" "$row3" "$row4"
    done
    echo
    cpu_table "µs CPU per request of the load generator (median; min–max)" CLIENT_CPU
    echo
    cpu_table "µs CPU per request, server + load generator (median; min–max)" TOTAL_CPU
    echo
    echo "| scenario | server | req/s | p99 ms | MB/s | errors |"
    echo "|---|---|---:|---:|---:|---:|"
    for sc in "${SCENARIO_LIST[@]}"; do
        [[ $sc == *idle-10k ]] && continue
        for server in "${SERVER_LIST[@]}"; do
            [[ -n ${RPS[$sc,$server]// /} ]] || continue
            printf '| %s | %s | %s | %s | %s | %d |\n' "$sc" "$server" \
                "$(fmt '%.0f' "$(median ${RPS[$sc,$server]})")" \
                "$(fmt '%.2f' "$(median ${P99[$sc,$server]})")" \
                "$(fmt '%.1f' "$(median ${MBPS[$sc,$server]})")" \
                "${ERRS[$sc,$server]}"
        done
    done
    if [[ " ${SCENARIO_LIST[*]} " == *" rate-20k "* ]]; then
        echo
        echo "| rate-20k: $RATE req/s, 64 connections, latency ms (median of $ROUNDS) | p50 | p99 | p99.9 |"
        echo "|---|---:|---:|---:|"
        for server in "${SERVER_LIST[@]}"; do
            [[ -n ${P99[rate-20k,$server]// /} ]] || continue
            printf '| %s | %s | %s | %s |\n' "$server" "$(fmt '%.3f' "$(median ${P50[rate-20k,$server]})")" \
                "$(fmt '%.3f' "$(median ${P99[rate-20k,$server]})")" "$(fmt '%.3f' "$(median ${P999[rate-20k,$server]})")"
        done
    fi
    echo
    echo "Medians over rounds. µs CPU/req = utime + stime of every process of the server's session during"
    echo "the run / requests completed; the load generator's the same of wrk (oha for rate-20k). On loopback"
    echo "part of each side's TCP work runs in the other's context; the sum is the machine's. MB/s = MiB/s"
    echo "(wrk Transfer/sec); errors = socket errors + responses >= 400, summed over rounds (per-run detail"
    echo "in runs.tsv). Memory: idle-10k, $IDLE_CONNS connections held idle after one GET /1k.bin each"
    echo "(memory.tsv). '–': the server cannot run the scenario with the same files (lighttpd: no"
    echo "precompressed sidecars)."
    [[ -s $TMP/tls-negotiated ]] && echo "TLS: $(paste -sd ';' "$TMP/tls-negotiated")"
} >"$BENCH_OUT/results.md"

cat "$BENCH_OUT/results.md"
log "results: $BENCH_OUT/results.md, raw wrk outputs: $BENCH_OUT/wrk-*.txt"
