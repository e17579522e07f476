#!/usr/bin/env bash
# bench/run.sh — compare webd with nginx serving the same static files (wrk, loopback only).
#
# Usage:  bench/run.sh                      (works from any cwd)
#         DURATION=3 ROUNDS=1 bench/run.sh  (quick check)
#
# Environment knobs (all optional):
#   WEBD_BIN       path to a webd binary; skips `cargo build --release`
#                  (default: build and use ${CARGO_TARGET_DIR:-target}/release/webd)
#   ROUNDS         rounds per scenario; each round runs webd and nginx once      (default 3)
#   DURATION       wrk duration per run, e.g. 10, 10s, 1m                         (default 10s)
#   THREADS        wrk threads                                                    (default 2)
#   SCENARIOS      space/comma separated subset of: keepalive-1k close-1k 10m
#                  text-64k-br tls-keepalive-1k tls-close-1k tls-10m              (default all)
#   WORKERS        worker processes for both servers                              (default 2)
#   WARMUP         seconds of untimed keep-alive load per server before the runs;
#                  0 disables                                                     (default 1)
#   READY_TIMEOUT  seconds to wait for each server to answer HTTP                 (default 30)
#   BENCH_OUT      output directory                                    (default bench/out)
#
# Scenarios (wrk --latency, THREADS threads, 127.0.0.1 only):
#   keepalive-1k  64 connections, GET /1k.bin
#   close-1k      64 connections, GET /1k.bin with "Connection: close"
#   10m           8 connections,  GET /10m.bin
#   text-64k-br   64 connections, GET /64k.txt with "Accept-Encoding: br, gzip": a compressible
#                 64 KiB text file with .br and .gz sidecars made by the brotli and gzip tools;
#                 nginx serves them with brotli_static and gzip_static on, webd picks them itself
#   tls-keepalive-1k, tls-close-1k, tls-10m
#                 the same over HTTPS: one self-signed ECDSA P-256 certificate for both servers,
#                 TLS 1.2 and 1.3 offered, TLS 1.3 with TLS_AES_256_GCM_SHA384 on both (the
#                 negotiated protocol and cipher are printed); tls-close-1k is a full handshake
#                 per request (wrk does not resume sessions)
#
# Server CPU per request: utime + stime of every process in the server's session (each
# server is started with setsid; /proc/PID/stat field 6), read before and after each wrk
# run, divided by the requests wrk completed. The load generator shares the cores, so this
# is the figure that says what a request costs the server.
#
# Within a round the server that goes first alternates (odd rounds webd first, even rounds
# nginx first) so slow drift of the shared machine does not favour one side.
#
# Output: a markdown table on stdout and in $BENCH_OUT/results.md; every figure is the
# median over the rounds, the ratio is the median of the per-round webd/nginx req/s ratios.
# MB/s is wrk's Transfer/sec in MiB/s (wrk's units are 1024-based). p99 comes from wrk's
# latency distribution (ms). errors = socket errors (connect/read/write/timeout) plus
# responses with status >= 400, summed over all rounds.
# Raw wrk outputs: $BENCH_OUT/wrk-<scenario>-<server>-r<round>.txt; one row per run in
# $BENCH_OUT/runs.tsv; server logs in $BENCH_OUT/webd.log and $BENCH_OUT/nginx-error.log.
#
# Note: wrk and both servers share the machine's cores, so absolute numbers are low on a
# small box; the ratio is the figure to compare.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
SCENARIOS=${SCENARIOS:-keepalive-1k close-1k 10m text-64k-br tls-keepalive-1k tls-close-1k tls-10m}
WORKERS=${WORKERS:-2}
WARMUP=${WARMUP:-1}
READY_TIMEOUT=${READY_TIMEOUT:-30}
BENCH_OUT=${BENCH_OUT:-$REPO/bench/out}
WEBD_BIN=${WEBD_BIN:-}

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
check_int THREADS 1 64
check_int WORKERS 1 256
check_int WARMUP 0 60
check_int READY_TIMEOUT 1 600
[[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "DURATION must look like 10, 10s or 1m (got '$DURATION')"
[[ $DURATION =~ [smh]$ ]] || DURATION=${DURATION}s

# scenario -> "connections path extra-header"
declare -A SC_CONNS=([keepalive-1k]=64 [close-1k]=64 [10m]=8 [text-64k-br]=64
    [tls-keepalive-1k]=64 [tls-close-1k]=64 [tls-10m]=8)
declare -A SC_PATH=([keepalive-1k]=/1k.bin [close-1k]=/1k.bin [10m]=/10m.bin [text-64k-br]=/64k.txt
    [tls-keepalive-1k]=/1k.bin [tls-close-1k]=/1k.bin [tls-10m]=/10m.bin)
declare -A SC_HEADER=([keepalive-1k]="" [close-1k]="Connection: close" [10m]="" [text-64k-br]="Accept-Encoding: br, gzip"
    [tls-keepalive-1k]="" [tls-close-1k]="Connection: close" [tls-10m]="")
read -r -a SCENARIO_LIST <<<"${SCENARIOS//,/ }"
((${#SCENARIO_LIST[@]} > 0)) || die "SCENARIOS is empty"
for s in "${SCENARIO_LIST[@]}"; do
    conns=${SC_CONNS[$s]:-}
    [[ -n $conns ]] || die "unknown scenario '$s' (known: ${!SC_CONNS[*]})"
    ((conns >= THREADS)) || die "scenario $s has $conns connections < THREADS=$THREADS"
done

# ---------------------------------------------------------------- cleanup (set up first)
TMP=""
WEBD_PID=""
NGINX_PID=""

# Stop a server started with setsid (so pid == process group id): SIGTERM to the leader
# (webd and the nginx master shut their own children down), wait up to 10 s, then SIGKILL
# whatever is left in its process group.
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
    local rc=$?
    trap - EXIT INT TERM
    stop_group webd "$WEBD_PID"
    stop_group nginx "$NGINX_PID"
    if [[ -n $TMP && -d $TMP ]]; then
        [[ -f $TMP/nginx/error.log ]] && cp -f "$TMP/nginx/error.log" "$BENCH_OUT/nginx-error.log" 2>/dev/null
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
NGINX=$(command -v nginx 2>/dev/null || true)
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
[[ -n $NGINX ]] || need_pkgs+=(nginx-light)
BROTLI_MODULE=/usr/lib/nginx/modules/ngx_http_brotli_static_module.so
[[ -f $BROTLI_MODULE ]] || need_pkgs+=(libnginx-mod-http-brotli-static)
command -v brotli >/dev/null 2>&1 || need_pkgs+=(brotli)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if ((${#need_pkgs[@]} > 0)); then
    log "installing ${need_pkgs[*]} with apt"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need_pkgs[@]}" >&2
    NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
fi
[[ -x $NGINX ]] || die "nginx not found after install"
command -v wrk >/dev/null 2>&1 || die "wrk not found after install"
[[ -f $BROTLI_MODULE ]] || die "nginx's brotli_static module ($BROTLI_MODULE) not found after install"

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

# ---------------------------------------------------------------- 2. docroot
mkdir -p "$BENCH_OUT"
rm -f "$BENCH_OUT"/wrk-*.txt "$BENCH_OUT/runs.tsv" "$BENCH_OUT/results.md" \
    "$BENCH_OUT/webd.log" "$BENCH_OUT/nginx-error.log"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/webd-bench.XXXXXX")
ROOT=$TMP/root
mkdir -p "$ROOT" "$TMP/nginx"
head -c 1024 /dev/urandom >"$ROOT/1k.bin"
head -c $((10 * 1024 * 1024)) /dev/urandom >"$ROOT/10m.bin"
# Compressible text: HTML-like lines with varying numbers.
awk 'BEGIN { for (i = 0; i < 2000; i++) printf "<li class=\"item\">entry %d of the index, see page %d</li>\n", i, i * 7 % 13 }' \
    >"$TMP/text"
head -c 65536 "$TMP/text" >"$ROOT/64k.txt"
brotli -k -q 11 "$ROOT/64k.txt"
gzip -k -9 "$ROOT/64k.txt"
chmod 755 "$TMP" "$ROOT"
# One certificate for both servers (nginx workers run as root here, so 0600 is fine).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null ||
    die "openssl could not make the test certificate"
chmod 644 "$ROOT"/*.bin "$ROOT"/64k.txt*

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

# Check that a server returns the exact bytes of both files.
verify_content() {
    local name=$1 port=$2 tls_port=$3 f
    for f in 1k.bin 10m.bin; do
        curl -sf --max-time 10 "http://127.0.0.1:$port/$f" | cmp -s - "$ROOT/$f" ||
            die "$name served wrong content for /$f"
    done
    # Both must send the same brotli sidecar to a client that prefers br.
    curl -sf --max-time 10 -H 'Accept-Encoding: br, gzip' "http://127.0.0.1:$port/64k.txt" |
        cmp -s - "$ROOT/64k.txt.br" || die "$name did not serve the .br sidecar of /64k.txt"
    for f in 1k.bin 10m.bin; do
        curl -sfk --max-time 10 "https://127.0.0.1:$tls_port/$f" | cmp -s - "$ROOT/$f" ||
            die "$name served wrong content for https /$f"
    done
    printf '%s: %s\n' "$name" "$(openssl s_client -connect "127.0.0.1:$tls_port" -servername localhost </dev/null 2>/dev/null |
        awk '/^New, / { sub(/^New, /, ""); print; exit }')" >>"$TMP/tls-negotiated"
}

write_nginx_conf() {
    local port=$1 tls_port=$2
    cat >"$TMP/nginx/nginx.conf" <<EOF
# generated by bench/run.sh
load_module $BROTLI_MODULE;
user root;
worker_processes $WORKERS;
daemon off;
master_process on;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
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
        listen 127.0.0.1:$port;
        listen 127.0.0.1:$tls_port ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        root $ROOT;
    }
}
EOF
}

start_nginx() {
    local attempt
    for ((attempt = 1; attempt <= 5; attempt++)); do
        pick_port
        NGINX_PORT=$PORT
        pick_port
        NGINX_TLS_PORT=$PORT
        write_nginx_conf "$NGINX_PORT" "$NGINX_TLS_PORT"
        if ! "$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"; then
            tail -n 5 "$TMP/nginx/error.log" >&2 || true
            die "nginx rejected the generated config"
        fi
        setsid "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
            </dev/null >>"$TMP/nginx/stdout.log" 2>&1 &
        NGINX_PID=$!
        if wait_http nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/1k.bin"; then
            log "nginx $("$NGINX" -v 2>&1 | sed 's/.*version: //') up on 127.0.0.1:$NGINX_PORT (pid $NGINX_PID)"
            return 0
        fi
        tail -n 5 "$TMP/nginx/error.log" "$TMP/nginx/stdout.log" >&2 || true
        stop_group nginx "$NGINX_PID"
        NGINX_PID=""
    done
    die "nginx did not start"
}

start_webd() {
    local attempt
    : >"$BENCH_OUT/webd.log"
    for ((attempt = 1; attempt <= 3; attempt++)); do
        pick_port
        WEBD_PORT=$PORT
        pick_port
        WEBD_TLS_PORT=$PORT
        rm -f "$TMP/webd.sock"
        log "starting webd: $WEBD_BIN --listen 127.0.0.1:$WEBD_PORT --tls-listen 127.0.0.1:$WEBD_TLS_PORT --root $ROOT --workers $WORKERS --admin off --control-socket $TMP/webd.sock"
        setsid "$WEBD_BIN" --listen "127.0.0.1:$WEBD_PORT" --root "$ROOT" --workers "$WORKERS" \
            --tls-listen "127.0.0.1:$WEBD_TLS_PORT" --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" \
            --admin off --control-socket "$TMP/webd.sock" \
            </dev/null >>"$BENCH_OUT/webd.log" 2>&1 &
        WEBD_PID=$!
        if wait_http webd "$WEBD_PID" "http://127.0.0.1:$WEBD_PORT/1k.bin"; then
            log "webd up on 127.0.0.1:$WEBD_PORT (pid $WEBD_PID)"
            return 0
        fi
        log "webd failed to start (attempt $attempt); last log lines:"
        tail -n 10 "$BENCH_OUT/webd.log" >&2 || true
        stop_group webd "$WEBD_PID"
        WEBD_PID=""
    done
    die "webd did not start; see $BENCH_OUT/webd.log"
}

NGINX_PORT=""
WEBD_PORT=""
NGINX_TLS_PORT=""
WEBD_TLS_PORT=""
start_nginx
start_webd
: >"$TMP/tls-negotiated"
verify_content nginx "$NGINX_PORT" "$NGINX_TLS_PORT"
verify_content webd "$WEBD_PORT" "$WEBD_TLS_PORT"
log "TLS negotiated: $(paste -sd ';' "$TMP/tls-negotiated")"

# ---------------------------------------------------------------- 4. load
# cpu_ticks SID: utime + stime (clock ticks) of every process in session SID (a server we
# started with setsid, so its pid is the session id): never a process found by name.
cpu_ticks() {
    local sid=$1 f line rest total=0
    local -a fields
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        rest=${line##*) } # after the command name, which may contain spaces and parentheses
        read -r -a fields <<<"$rest"
        # fields from state (stat field 3): session is field 6, utime 14, stime 15
        [[ ${fields[3]:-} == "$sid" ]] || continue
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

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
    printf '%s\n' "$@" | { grep -E '^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$' || true; } | sort -g |
        awk '{ a[NR] = $1 } END {
            if (NR == 0) { print "NA"; exit }
            if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2
        }'
}

fmt() { # fmt PRINTF-FORMAT VALUE
    # shellcheck disable=SC2059 # the format is always a literal from this script
    if [[ $2 == NA ]]; then printf 'n/a'; else LC_ALL=C printf "$1" "$2"; fi
}

port_of() { if [[ $1 == webd ]]; then echo "$WEBD_PORT"; else echo "$NGINX_PORT"; fi; }
tls_port_of() { if [[ $1 == webd ]]; then echo "$WEBD_TLS_PORT"; else echo "$NGINX_TLS_PORT"; fi; }
pid_of() { if [[ $1 == webd ]]; then echo "$WEBD_PID"; else echo "$NGINX_PID"; fi; }

# run_wrk SERVER SCENARIO DURATION OUTFILE
run_wrk() {
    local server=$1 sc=$2 dur=$3 outfile=$4 port pid
    port=$(port_of "$server")
    pid=$(pid_of "$server")
    local scheme=http
    if [[ $sc == tls-* ]]; then
        scheme=https
        port=$(tls_port_of "$server")
    fi
    kill -0 "$pid" 2>/dev/null || die "$server (pid $pid) is no longer running"
    local args=(-t "$THREADS" -c "${SC_CONNS[$sc]}" -d "$dur" --latency)
    [[ -n ${SC_HEADER[$sc]} ]] && args+=(-H "${SC_HEADER[$sc]}")
    args+=("$scheme://127.0.0.1:$port${SC_PATH[$sc]}")
    if ! wrk "${args[@]}" >"$outfile" 2>&1; then
        log "wrk failed for $server/$sc (see $outfile)"
    fi
    kill -0 "$pid" 2>/dev/null || die "$server (pid $pid) exited during the $sc run (see $outfile)"
}

if ((WARMUP > 0)); then
    for server in webd nginx; do
        log "warm-up: $server ${WARMUP}s"
        run_wrk "$server" keepalive-1k "${WARMUP}s" "$TMP/warmup-$server.txt"
    done
fi

declare -A RPS MBPS P99 ERRS RATIO CPU
printf 'scenario\tround\tserver\treq_per_s\tMiB_per_s\tp99_ms\terrors\terror_detail\n' >"$BENCH_OUT/runs.tsv"
for sc in "${SCENARIO_LIST[@]}"; do
    RATIO[$sc]=""
    for server in webd nginx; do
        RPS[$sc,$server]=""; MBPS[$sc,$server]=""; P99[$sc,$server]=""; ERRS[$sc,$server]=0; CPU[$sc,$server]=""
    done
    for ((round = 1; round <= ROUNDS; round++)); do
        if ((round % 2)); then order=(webd nginx); else order=(nginx webd); fi
        declare -A this_rps=()
        for server in "${order[@]}"; do
            out=$BENCH_OUT/wrk-$sc-$server-r$round.txt
            log "$sc round $round/$ROUNDS: $server (${SC_CONNS[$sc]} conns, $DURATION)"
            ticks_before=$(cpu_ticks "$(pid_of "$server")")
            run_wrk "$server" "$sc" "$DURATION" "$out"
            ticks_after=$(cpu_ticks "$(pid_of "$server")")
            read -r rps mbps p99 errs detail < <(parse_wrk "$out")
            cpu=$(awk -v t=$((ticks_after - ticks_before)) -v hz="$CLK_TCK" -v n="$(requests_of "$out")" \
                'BEGIN { if (n + 0 > 0) printf "%.1f", t / hz / n * 1e6; else print "NA" }')
            CPU[$sc,$server]+=" $cpu"
            log "  $server: req/s=$rps MiB/s=$mbps p99=${p99}ms cpu/req=${cpu}us errors=$errs ($detail)"
            printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$round" "$server" "$rps" "$mbps" "$p99" \
                "$errs" "$detail" >>"$BENCH_OUT/runs.tsv"
            RPS[$sc,$server]+=" $rps"
            MBPS[$sc,$server]+=" $mbps"
            P99[$sc,$server]+=" $p99"
            prev=${ERRS[$sc,$server]}
            ERRS[$sc,$server]=$((prev + errs))
            this_rps[$server]=$rps
        done
        ratio=$(awk -v a="${this_rps[webd]}" -v b="${this_rps[nginx]}" \
            'BEGIN { if (a != "NA" && b != "NA" && b + 0 > 0) print a / b; else print "NA" }')
        RATIO[$sc]+=" $ratio"
        unset this_rps
    done
done

# ---------------------------------------------------------------- 5. report
{
    echo "## webd vs nginx"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, rounds=$ROUNDS, duration=$DURATION," \
        "wrk threads=$THREADS, workers=$WORKERS, nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')," \
        "webd $(basename "$WEBD_BIN")$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null | sed 's/^/ @ /' || true)"
    echo
    echo "| scenario | webd req/s | nginx req/s | ratio | webd µs CPU/req | nginx µs CPU/req | webd MB/s | nginx MB/s | webd p99 ms | nginx p99 ms | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    for sc in "${SCENARIO_LIST[@]}"; do
        # shellcheck disable=SC2086 # word splitting of the space-separated per-round lists is intended
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | webd %d / nginx %d |\n' "$sc" \
            "$(fmt '%.0f' "$(median ${RPS[$sc,webd]})")" \
            "$(fmt '%.0f' "$(median ${RPS[$sc,nginx]})")" \
            "$(fmt '%.2f' "$(median ${RATIO[$sc]})")" \
            "$(fmt '%.1f' "$(median ${CPU[$sc,webd]})")" \
            "$(fmt '%.1f' "$(median ${CPU[$sc,nginx]})")" \
            "$(fmt '%.1f' "$(median ${MBPS[$sc,webd]})")" \
            "$(fmt '%.1f' "$(median ${MBPS[$sc,nginx]})")" \
            "$(fmt '%.2f' "$(median ${P99[$sc,webd]})")" \
            "$(fmt '%.2f' "$(median ${P99[$sc,nginx]})")" \
            "${ERRS[$sc,webd]}" "${ERRS[$sc,nginx]}"
    done
    echo
    echo "Medians over rounds; ratio = median of per-round webd/nginx req/s; MB/s = MiB/s (wrk Transfer/sec);"
    echo "errors = socket errors + responses >= 400, summed over rounds (per-run detail in runs.tsv);"
    echo "µs CPU/req = utime + stime of every process of the server during the run / requests completed."
    echo "TLS: $(paste -sd ';' "$TMP/tls-negotiated")"
} >"$BENCH_OUT/results.md"

cat "$BENCH_OUT/results.md"
log "results: $BENCH_OUT/results.md, raw wrk outputs: $BENCH_OUT/wrk-*.txt"
