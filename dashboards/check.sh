#!/usr/bin/env bash
# Static checks for the webd observability assets. Run from anywhere:
#
#     bash dashboards/check.sh
#
#  1. installs promtool (Debian package `prometheus`, service not started) and jq if missing;
#  2. promtool check rules dashboards/alerts.yml, promtool test rules dashboards/alerts_test.yml;
#  3. webd.json: valid JSON, dashboard conventions (uid, schemaVersion, variables, datasource
#     and $instance filter on every target, a description on every panel, known metric names);
#  4. every panel expr, with Grafana variables substituted, parses as PromQL (written into a
#     temporary rules file as recording rules and checked with promtool).
#
# Exits non-zero, naming what failed, if any check fails.
set -uo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ALERTS="$DIR/alerts.yml"
ALERTS_TEST="$DIR/alerts_test.yml"
DASH="$DIR/webd.json"
QUERIES="$DIR/queries.py"

failures=()
fail() { failures+=("$1"); echo "FAIL: $1" >&2; }
step() { printf '\n== %s\n' "$*"; }

TMP="$(mktemp -d)"
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    # Never start services from package maintainer scripts: if no policy-rc.d exists,
    # install a temporary one that forbids starting them, and remove it afterwards.
    local own_policy=0 rc
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null &&
            as_root chmod 755 /usr/sbin/policy-rc.d && own_policy=1
    fi
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
        as_root apt-get update -q
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    rc=$?
    [ "$own_policy" = 1 ] && as_root rm -f /usr/sbin/policy-rc.d
    return $rc
}

# ------------------------------------------------------------------ tools
step "tools"
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt_install "${need[@]}" || { echo "FAIL: could not install ${need[*]}" >&2; exit 1; }
fi
for t in promtool jq python3; do
    command -v "$t" >/dev/null 2>&1 || { echo "FAIL: $t not available" >&2; exit 1; }
done
promtool --version 2>&1 | head -n1

# ------------------------------------------------------------------ alerting rules
step "promtool check rules $ALERTS"
promtool check rules "$ALERTS" || fail "promtool check rules alerts.yml"

step "promtool test rules $ALERTS_TEST"
if [ -f "$ALERTS_TEST" ]; then
    (cd "$DIR" && promtool test rules "$(basename "$ALERTS_TEST")") || fail "promtool test rules alerts_test.yml"
fi

step "alert metadata (severity, summary, description, runbook_url)"
python3 - "$ALERTS" <<'PY' || fail "alert metadata"
import re, sys
# promtool has validated the structure; this checks our conventions on the rule text
# (stdlib only, no YAML parser needed).
text = open(sys.argv[1], encoding="utf-8").read()
blocks = re.split(r"\n\s*- alert:\s*", text)[1:]
ok = True
expected = {"WebdDown", "WebdProcessDown", "WebdRestartStorm", "WebdHeartbeatStale",
            "WebdNotReady", "WebdHigh5xxRatio", "WebdCertificateExpiresSoon"}
seen = set()
for b in blocks:
    name = b.split()[0]
    seen.add(name)
    for key in ("severity:", "summary:", "description:", "runbook_url:"):
        if key not in b:
            print(f"  {name}: missing {key[:-1]}"); ok = False
    m = re.search(r'runbook_url:\s*"?([^"\n]+)', b)
    # Absolute, so it opens from Alertmanager and Grafana; the base is the deployment's.
    anchor = f"/docs/runbook.md#{name.lower()}"
    if m and not (m.group(1).startswith("https://") and m.group(1).endswith(anchor)):
        print(f"  {name}: runbook_url {m.group(1)!r} is not an absolute URL ending in {anchor}"); ok = False
    m = re.search(r"severity:\s*(\S+)", b)
    if m and m.group(1) not in ("critical", "warning", "info"):
        print(f"  {name}: unexpected severity {m.group(1)}"); ok = False
for missing in sorted(expected - seen):
    print(f"  missing alert {missing}"); ok = False
print("  %d alerts: %s" % (len(seen), ", ".join(sorted(seen))))
sys.exit(0 if ok else 1)
PY

# ------------------------------------------------------------------ dashboard JSON
step "dashboard JSON $DASH"
if ! jq empty "$DASH"; then
    fail "webd.json is not valid JSON"
    # Nothing below can work on invalid JSON.
    printf '\n%d check(s) failed:\n' "${#failures[@]}" >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "  valid JSON"

step "dashboard conventions"
python3 - "$DASH" <<'PY' || fail "dashboard conventions"
import json, re, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
errs = []
def err(msg): errs.append(msg)

if d.get("uid") != "webd": err(f"uid is {d.get('uid')!r}, want 'webd'")
if d.get("title") != "webd": err(f"title is {d.get('title')!r}, want 'webd'")
if d.get("schemaVersion") != 39: err(f"schemaVersion is {d.get('schemaVersion')!r}, want 39")

vars_ = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
ds = vars_.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    err("templating: need variable 'datasource' of type datasource with query 'prometheus'")
inst = vars_.get("instance")
if not inst or inst.get("type") != "query":
    err("templating: need query variable 'instance'")
else:
    q = inst.get("query"); q = q.get("query") if isinstance(q, dict) else q
    if re.sub(r"\s", "", q or "") != "label_values(webd_build_info,instance)":
        err(f"templating: instance query is {q!r}")
    if not inst.get("includeAll") or not inst.get("multi"):
        err("templating: instance must be includeAll and multi")
    if inst.get("datasource", {}).get("uid") != "${datasource}":
        err("templating: instance variable must use ${datasource}")

# Metric names allowed in queries: docs/reference.md, Metrics, the process collector, histogram suffixes.
hist = {"webd_heartbeat_latency_seconds", "webd_http_request_duration_seconds",
        "webd_tls_handshake_duration_seconds"}
allowed = {"webd_heartbeat_age_seconds", "webd_heartbeats_missed_total", "webd_restarts_total",
           "webd_process_up", "webd_workers", "webd_worker_utilization_ratio",
           "webd_connections_accepted_total", "webd_connections_active",
           "webd_http_requests_total", "webd_http_requests_by_encoding_total", "webd_http_response_bytes_total", "webd_draining",
           "webd_build_info", "process_cpu_seconds_total", "process_resident_memory_bytes",
           "process_open_fds", "process_max_fds", "process_start_time_seconds",
           "webd_tls_handshakes_total", "webd_tls_resumed_total", "webd_connections_rescued_total",
           "webd_tls_certificate_expiry_timestamp_seconds"}
allowed |= {h + s for h in hist for s in ("_bucket", "_sum", "_count")}

def panels(ps):
    for p in ps or []:
        yield p
        yield from panels(p.get("panels"))

rows, n_panels, n_targets, ids, seen_rows = [], 0, 0, set(), []
want_rows = ["Overview", "Supervision", "Workers", "Traffic", "TLS"]
for p in panels(d.get("panels")):
    t = p.get("type"); title = p.get("title") or f"id {p.get('id')}"
    pid = p.get("id")
    if pid in ids: err(f"duplicate panel id {pid}")
    ids.add(pid)
    gp = p.get("gridPos") or {}
    if not all(isinstance(gp.get(k), int) for k in "hwxy") or gp.get("x", 0) + gp.get("w", 0) > 24:
        err(f"{title}: bad gridPos {gp}")
    if t == "row":
        seen_rows.append(title); continue
    n_panels += 1
    if t not in ("timeseries", "stat", "gauge", "bargauge", "table", "text", "heatmap", "piechart", "state-timeline"):
        err(f"{title}: legacy/unknown panel type {t!r}")
    if len((p.get("description") or "").strip()) < 40:
        err(f"{title}: missing or too short description")
    if p.get("datasource") not in (None, {"type": "prometheus", "uid": "${datasource}"}):
        err(f"{title}: panel datasource is {p.get('datasource')}")
    targets = p.get("targets") or []
    if t != "text" and not targets: err(f"{title}: no targets")
    refs = set()
    for tg in targets:
        n_targets += 1
        ref = tg.get("refId")
        if ref in refs: err(f"{title}: duplicate refId {ref}")
        refs.add(ref)
        if tg.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
            err(f"{title} [{ref}]: target datasource is {tg.get('datasource')}")
        e = tg.get("expr") or ""
        if not e: err(f"{title} [{ref}]: empty expr"); continue
        # Every selector must be a known metric and carry the instance filter.
        for m in re.finditer(r"\b((?:webd|process)_[a-z0-9_]+)\b(\s*\{[^}]*\})?", e):
            name, labels = m.group(1), m.group(2) or ""
            if name not in allowed:
                err(f"{title} [{ref}]: unknown metric {name}")
            if 'instance=~"$instance"' not in labels:
                err(f"{title} [{ref}]: selector {name}{labels} lacks instance=~\"$instance\"")
        if re.search(r"\b(rate|irate|increase)\([^\[]*\[(?!\$__rate_interval\])", e):
            err(f"{title} [{ref}]: range vector window is not $__rate_interval")
for r in want_rows:
    if r not in seen_rows: err(f"missing row {r!r}")
print(f"  {n_panels} panels, {n_targets} targets, rows: {', '.join(seen_rows)}")
for e in errs: print("  " + e)
sys.exit(1 if errs else 0)
PY

# ------------------------------------------------------------------ PromQL syntax of panel queries
step "panel queries parse as PromQL"
if ! python3 "$QUERIES" --list "$DASH" >"$TMP/exprs.jsonl"; then
    fail "extracting queries from webd.json (queries.py --list)"
    cat "$TMP/exprs.jsonl" >&2
fi
nexpr=$(grep -c . "$TMP/exprs.jsonl" || true)
if [ "${nexpr:-0}" -eq 0 ]; then
    fail "no queries extracted from webd.json"
else
    # Substituted exprs must contain no Grafana variables any more.
    if jq -e -r 'select(.expr | test("\\$|\\[\\[")) | "  unsubstituted variable: \(.panel) [\(.ref)]: \(.expr)"' \
        "$TMP/exprs.jsonl" >&2; then
        fail "unsubstituted Grafana variables in queries"
    fi
    # One rule group per query, so promtool's error names the failing one; JSON is valid YAML.
    jq -s '{groups: [to_entries[] | {name: "q\(.key) \(.value.panel) [\(.value.ref)]",
            rules: [{record: "dashboard_query:q\(.key)", expr: .value.expr}]}]}' \
        "$TMP/exprs.jsonl" >"$TMP/dashboard_rules.json"
    if promtool check rules "$TMP/dashboard_rules.json" >"$TMP/promtool.out" 2>&1; then
        echo "  $nexpr queries parse:"
        jq -r '"    \(.panel) [\(.ref)]: \(.expr)"' "$TMP/exprs.jsonl"
    else
        cat "$TMP/promtool.out" >&2
        fail "panel queries do not parse (see promtool output above; group qN = Nth query)"
    fi
fi

# ------------------------------------------------------------------ queries.py self-check
step "queries.py compiles"
python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$QUERIES" \
    && echo "  ok" || fail "queries.py does not compile"

echo
if [ ${#failures[@]} -gt 0 ]; then
    printf '%d check(s) failed:\n' "${#failures[@]}" >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "ALL CHECKS PASSED"
