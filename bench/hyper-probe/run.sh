#!/usr/bin/env bash
# bench/hyper-probe/run.sh — instructions (callgrind) and syscalls (strace) per request:
# hyper-probe (hyper 1.x http1, current-thread tokio) vs webd (httparse + mio worker).
#
# Every run starts one server on 127.0.0.1, waits until it serves, idles SETTLE seconds,
# then either runs hp-client (N sequential requests, each checked) or, for the baseline,
# sleeps as long as the measured run's client took; then SIGTERM and wait. The per-request
# figure is (measured - baseline) / N, per process. Only 127.0.0.1 is ever targeted;
# every wait is bounded.
#
# Usage: bench/hyper-probe/run.sh [callgrind|strace|all]       (default all)
# Knobs: N_KA (5000) N_CLOSE (2000) REPS (2) SETTLE (2) OUT (/tmp/hp/out)
#        CARGO_TARGET_DIR (/tmp/tgt-hyper) SKIP_BUILD=1
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/tgt-hyper}
BIN=$CARGO_TARGET_DIR/release
N_KA=${N_KA:-5000}
N_CLOSE=${N_CLOSE:-2000}
REPS=${REPS:-2}
SETTLE=${SETTLE:-2}
OUT=${OUT:-/tmp/hp/out}
ROOT=${ROOT:-/tmp/hp-root}
CTL=${CTL:-/tmp/hp-ctl}
PORT=${PORT:-18090}
WHAT=${1:-all}

log() { printf '[hp] %s\n' "$*" >&2; }
die() { printf '[hp] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$REPO" && cargo build --release --bin webd)
    (cd "$HERE" && cargo build --release)
fi
for b in webd hyper-probe hp-client; do [[ -x $BIN/$b ]] || die "missing $BIN/$b"; done

# valgrind --trace-children=yes would replace each webd child's argv[0] (its role) with
# the binary's path; vgexec.so starts each child under its own callgrind instead, found
# through PATH by a slash-less name so argv[0] survives (see vgexec.c).
SHIM_DIR=${SHIM_DIR:-/tmp/hp/shim}
mkdir -p "$SHIM_DIR/roles"
cc -O2 -shared -fPIC -o "$SHIM_DIR/vgexec.so" "$HERE/vgexec.c" -ldl
for role in "listener" "manager" "worker 0"; do ln -sfn "$BIN/webd" "$SHIM_DIR/roles/webd: $role"; done

mkdir -p "$ROOT" "$CTL" "$OUT"
if [[ ! -f $ROOT/1k.html ]] || [[ $(stat -c %s "$ROOT/1k.html") != 1024 ]]; then
    head -c 768 /dev/urandom | base64 -w 0 | head -c 1024 > "$ROOT/1k.html"
fi

# webd flags: one worker, no admin endpoint; heartbeats slow enough (1 s, 20 s timeout)
# that valgrind's ~50x slowdown never looks like a hang, and a long grace so nothing is
# SIGKILLed before callgrind writes its output.
webd_args() {
    echo --listen "127.0.0.1:$1" --root "$ROOT" --workers 1 --admin off \
        --control-socket "$CTL/webd.sock" --heartbeat-interval 1000 --heartbeat-timeout 20000 \
        --grace 120000 --drain-timeout 120000
}

# wait_for FILE PATTERN SECONDS
wait_for() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# run_one TOOL SERVER SCENARIO KIND REP
#   TOOL callgrind|strace, SERVER hyper|webd, SCENARIO keepalive|close, KIND load|idle
run_one() {
    local tool=$1 server=$2 scen=$3 kind=$4 rep=$5
    local dir=$OUT/$tool/$server-$scen-r$rep-$kind
    local port=$((PORT + rep))
    rm -rf "$dir"; mkdir -p "$dir"
    local n=$N_KA; [[ $scen == close ]] && n=$N_CLOSE
    local wrap=()
    case $tool in
        callgrind)
            wrap=(valgrind --tool=callgrind "--callgrind-out-file=$dir/cg.%p" "--log-file=$dir/valgrind.%p.log")
            if [[ $server == webd ]]; then
                wrap=(env "HP_CG_DIR=$dir" "LD_PRELOAD=$SHIM_DIR/vgexec.so" "PATH=$SHIM_DIR/roles:$PATH" "${wrap[@]}")
            fi
            ;;
        strace) wrap=(strace -f -ff -qq -o "$dir/st") ;;
    esac
    local cmd ready
    if [[ $server == hyper ]]; then
        cmd=("$BIN/hyper-probe" --listen "127.0.0.1:$port" --root "$ROOT"); ready="listening on"
    else
        # shellcheck disable=SC2046
        cmd=("$BIN/webd" $(webd_args "$port")); ready="worker up"
    fi
    rm -f "$CTL/webd.sock"
    "${wrap[@]}" "${cmd[@]}" > "$dir/server.log" 2>&1 &
    local spid=$!
    echo "$spid" > "$dir/top.pid"
    wait_for "$dir/server.log" "$ready" 120 || { kill -TERM "$spid"; die "$server did not start ($dir)"; }
    sleep "$SETTLE"
    if [[ $kind == load ]]; then
        timeout 600 "$BIN/hp-client" --addr "127.0.0.1:$port" --path /1k.html --len 1024 --n "$n" \
            --mode "$scen" --deadline-secs 540 > "$dir/client.txt" || { kill -TERM "$spid"; die "client failed ($dir)"; }
    else
        local t
        t=$(sed -n 's/.*elapsed_secs=\([0-9.]*\).*/\1/p' "$OUT/$tool/$server-$scen-r$rep-load/client.txt")
        echo "requests=0 connections=0 elapsed_secs=$t (idle)" > "$dir/client.txt"
        sleep "$t"
    fi
    sleep 0.5
    # Signal the server itself: a SIGTERMed strace would detach and leave it running.
    local target=$spid
    if [[ $tool == strace ]]; then
        target=$(cat "/proc/$spid/task/$spid/children" 2>/dev/null | awk '{print $1}')
        [[ -n $target ]] || die "no traced child under strace $spid"
    fi
    kill -TERM "$target"
    local i
    for ((i = 0; i < 1800; i++)); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$spid" 2>/dev/null; then kill -KILL "$spid"; die "$server did not stop ($dir)"; fi
    wait "$spid" || true
    # Traced children may still be writing their profiles.
    sleep 1
    log "$tool $server $scen rep$rep $kind: $(cat "$dir/client.txt")"
}

tools=()
case $WHAT in
    callgrind | strace) tools=("$WHAT") ;;
    all) tools=(callgrind strace) ;;
    *) die "usage: $0 [callgrind|strace|all]" ;;
esac
for tool in "${tools[@]}"; do
    reps=$REPS; [[ $tool == strace ]] && reps=1
    for ((rep = 1; rep <= reps; rep++)); do
        for server in hyper webd; do
            for scen in keepalive close; do
                run_one "$tool" "$server" "$scen" load "$rep"
                run_one "$tool" "$server" "$scen" idle "$rep"
            done
        done
    done
done
python3 "$HERE/analyze.py" "$OUT" "$N_KA" "$N_CLOSE" | tee "$OUT/results.md"
