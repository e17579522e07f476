#!/usr/bin/env bash
# bench/profile.sh — where webd's CPU goes: perf, strace and context switches per request.
#
# Usage:  WEBD_BIN=target/release/webd bench/profile.sh      (needs perf, strace, wrk)
#
# Starts webd in its own session (setsid, 2 workers, access log off) and, for each of
# keepalive-1k (64 connections, GET /1k.bin) and close-1k (the same with Connection: close),
# runs wrk -t2 three times for DURATION seconds:
#   1. plain: requests, server CPU per request by process role (utime + stime from
#      /proc/PID/stat), context switches per request by role (/proc/PID/status
#      voluntary_ctxt_switches + nonvoluntary_ctxt_switches);
#   2. under `perf record -g` of the workers (and the listener for close-1k): the top
#      symbols, self time, in $OUT/perf-<scenario>-<role>.txt;
#   3. under `strace -c -f` of the workers, then of the listener: syscalls per request
#      ($OUT/strace-<scenario>-<role>.txt; strace slows the server, the counts per
#      request are what matters).
# Processes are the members of webd's session only, told apart by their role title
# ("webd: worker 0", "webd: listener"); never a process found by name.
#
# strace stops a worker for long stretches: the heartbeat timeout is raised to 10 minutes,
# or the manager would replace the traced workers as hung in mid-run.
#
# Knobs: WEBD_BIN (required), DURATION (default 5), OUT (default bench/out/profile).
set -euo pipefail
cd "$(dirname "$0")/.."
WEBD_BIN=${WEBD_BIN:?set WEBD_BIN to a webd release binary}
DURATION=${DURATION:-5}
OUT=${OUT:-bench/out/profile}
[[ $DURATION =~ ^[0-9]{1,3}$ ]] || { echo "DURATION must be seconds" >&2; exit 2; }
for tool in perf strace wrk curl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install linux-perf strace wrk curl)" >&2; exit 1; }
done
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/webd-profile.XXXXXX")
PID=""
cleanup() {
    if [[ -n $PID ]]; then
        kill -TERM "$PID" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$PID" 2>/dev/null || true
    fi
    rm -rf -- "$TMP"
}
trap cleanup EXIT
mkdir -p "$TMP/root"
head -c 1024 /dev/urandom >"$TMP/root/1k.bin"
PORT=$((20000 + RANDOM % 10000))
setsid "$WEBD_BIN" --listen "127.0.0.1:$PORT" --root "$TMP/root" --workers 2 --admin off \
    --max-requests-per-connection 100000 --heartbeat-timeout 600000 --control-socket "$TMP/webd.sock" </dev/null >"$OUT/webd.log" 2>&1 &
PID=$!
for ((i = 0; i < 100; i++)); do
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/1k.bin" && break
    kill -0 "$PID" 2>/dev/null || { echo "webd exited; see $OUT/webd.log" >&2; exit 1; }
    sleep 0.1
done

# role_pids ROLE-PREFIX: members of webd's session whose title starts with "webd: ROLE".
role_pids() {
    local f line rest p
    local -a fields
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        rest=${line##*) }
        read -r -a fields <<<"$rest"
        [[ ${fields[3]:-} == "$PID" ]] || continue
        p=${f#/proc/}
        p=${p%/stat}
        [[ $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) == "webd: $1"* ]] && echo "$p"
    done
}
ROLES=(listener keeper manager worker daemon)
pids_of() { if [[ $1 == daemon ]]; then echo "$PID"; else role_pids "$1"; fi; }

# counters ROLE -> "ticks ctxt" summed over the role's processes
counters() {
    local p ticks=0 ctxt=0 line rest key value
    local -a fields
    for p in $(pids_of "$1"); do
        { read -r line <"/proc/$p/stat"; } 2>/dev/null || continue
        rest=${line##*) }
        read -r -a fields <<<"$rest"
        ticks=$((ticks + fields[11] + fields[12]))
        while read -r key value; do
            [[ $key == voluntary_ctxt_switches: || $key == nonvoluntary_ctxt_switches: ]] && ctxt=$((ctxt + value))
        done <"/proc/$p/status"
    done
    echo "$ticks $ctxt"
}

run_wrk() { # run_wrk SCENARIO OUTFILE
    local args=(-t2 -c64 -d"${DURATION}s")
    [[ $1 == close-1k ]] && args+=(-H "Connection: close")
    wrk "${args[@]}" "http://127.0.0.1:$PORT/1k.bin" >"$2" 2>&1
    awk '/ requests in / { print $1; exit }' "$2"
}

hz=$(getconf CLK_TCK)
{
    echo "webd $WEBD_BIN, $(date -u '+%Y-%m-%d %H:%M UTC'), wrk -t2 -c64 ${DURATION}s"
    for sc in keepalive-1k close-1k; do
        declare -A before=()
        for role in "${ROLES[@]}"; do before[$role]=$(counters "$role"); done
        n=$(run_wrk "$sc" "$OUT/wrk-$sc.txt")
        echo
        echo "## $sc: $n requests"
        echo "| role | µs CPU / request | context switches / request |"
        echo "|---|---:|---:|"
        for role in "${ROLES[@]}"; do
            read -r t0 c0 <<<"${before[$role]}"
            read -r t1 c1 < <(counters "$role")
            awk -v r="$role" -v t=$((t1 - t0)) -v c=$((c1 - c0)) -v n="$n" -v hz="$hz" \
                'BEGIN { printf "| %s | %.1f | %.2f |\n", r, t / hz / n * 1e6, c / n }'
        done
        targets=(worker)
        [[ $sc == close-1k ]] && targets+=(listener)
        for role in "${targets[@]}"; do
            pids=$(pids_of "$role" | paste -sd,)
            perf record -q -g -o "$TMP/perf.data" -p "$pids" -- sleep "$DURATION" 2>/dev/null &
            perf_pid=$!
            n=$(run_wrk "$sc" "$TMP/wrk-perf.txt")
            wait "$perf_pid" || true
            cp "$TMP/perf.data" "$OUT/perf-$sc-$role.data"
            { perf report -i "$TMP/perf.data" --no-children -g none --sort symbol --stdio 2>/dev/null |
                grep -E '^ +[0-9.]+%' | head -n 40 >"$OUT/perf-$sc-$role.txt"; } || true
            echo
            echo "perf, $role: self time by object; syscalls (inclusive, top 10); self time, top 12"
            echo "(full: $OUT/perf-$sc-$role.txt):"
            { perf report -i "$TMP/perf.data" --no-children -g none --sort dso --stdio 2>/dev/null |
                grep -E '^ +[0-9.]+%' | head -n 5; } || true
            { perf report -i "$TMP/perf.data" --children -g none --sort symbol --stdio 2>/dev/null |
                grep -E '\] (__x64_sys_|net_rx_action|schedule$)' | head -n 12 | awk '{ print "   ", $1, $NF == "-" ? $(NF-2) : $NF }'; } || true
            head -n 12 "$OUT/perf-$sc-$role.txt" || true
            read -r -a plist <<<"$(pids_of "$role" | tr '\n' ' ')"
            sargs=()
            for p in "${plist[@]}"; do sargs+=(-p "$p"); done
            timeout $((DURATION + 10)) strace -c -f -o "$TMP/strace.txt" "${sargs[@]}" &
            strace_pid=$!
            sleep 0.5
            n=$(run_wrk "$sc" "$TMP/wrk-strace.txt")
            kill -INT "$strace_pid" 2>/dev/null || true
            wait "$strace_pid" 2>/dev/null || true
            cp "$TMP/strace.txt" "$OUT/strace-$sc-$role.txt"
            echo
            echo "syscalls per request, $role ($n requests under strace):"
            awk -v n="$n" '$NF != "total" && $4 ~ /^[0-9]+$/ && NF >= 5 {
                    calls = $4; name = $NF; errs = (NF == 6) ? $5 : 0
                    total += calls; printf "  %-14s %6.2f%s\n", name, calls / n, errs ? sprintf(" (%.2f errors)", errs / n) : ""
                } END { printf "  %-14s %6.2f\n", "all", total / n }' "$TMP/strace.txt" | sort -k2 -rn | head -n 14 || true
        done
    done
} | tee "$OUT/profile.md"
