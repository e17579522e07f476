#!/usr/bin/env python3
"""Run every query of a Grafana dashboard against a Prometheus and report which return data.

    python3 dashboards/queries.py --prometheus http://127.0.0.1:9090 dashboards/webd.json

Extracts each panel target's `expr` (including panels nested in collapsed rows) plus the
`label_values(metric, label)` query variables, substitutes Grafana variables the way a
dashboard showing "All" would behave ($instance -> .*, $__rate_interval -> 1m,
$__interval -> 15s, ...), runs each with an instant query on /api/v1/query and prints

    panel title | expr | series count

Exit status: 0 when every query returned at least one series, 1 when any returned no data
or an error, 2 on usage errors or when Prometheus cannot be reached at all.

`--list` prints the substituted queries as JSON lines ({"panel", "ref", "expr"}) without
contacting Prometheus; dashboards/check.sh uses it to syntax-check the expressions.

Standard library only.
"""

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# Values used for Grafana's variables. Regex-style variables become ".*" (the "All" choice);
# interval variables get a window that holds several samples at common scrape intervals.
DEFAULT_VARS = {
    "instance": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# Left untouched: it names the data source in target metadata, never appears in PromQL.
KEEP_VARS = {"datasource"}

# $name, ${name}, ${name:format}, [[name]], [[name:format]]
VAR_RE = re.compile(
    r"\$\{(?P<b>[A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}"
    r"|\[\[(?P<k>[A-Za-z_][A-Za-z0-9_]*)(?::[^\]]*)?\]\]"
    r"|\$(?P<p>[A-Za-z_][A-Za-z0-9_]*)"
)

LABEL_VALUES_RE = re.compile(r"^\s*label_values\(\s*(?P<sel>.+?)\s*,\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)


class UnknownVariable(Exception):
    pass


def substitute(expr, variables):
    """Replace Grafana variable references in expr; raise UnknownVariable for unknown ones."""
    def repl(m):
        name = m.group("b") or m.group("k") or m.group("p")
        if name in KEEP_VARS:
            return m.group(0)
        if name not in variables:
            raise UnknownVariable(name)
        return variables[name]
    return VAR_RE.sub(repl, expr)


def iter_panels(panels):
    for p in panels or []:
        yield p
        # Collapsed rows keep their panels inside the row; library panels are not resolved.
        yield from iter_panels(p.get("panels"))


def extract_queries(dashboard, variables):
    """Return a list of dicts: panel, ref, raw, expr (substituted) or error."""
    out = []
    for var in (dashboard.get("templating") or {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        m = LABEL_VALUES_RE.match(q or "")
        if not m:
            continue  # label_values(label) / metrics() / query_result() are not plain PromQL
        raw = "count by (%s) (%s)" % (m.group("label"), m.group("sel"))
        out.append(_entry("variable $%s" % var.get("name"), "var", raw, variables))
    for panel in iter_panels(dashboard.get("panels")):
        if panel.get("type") == "row":
            continue
        for t in panel.get("targets") or []:
            raw = t.get("expr")
            if not raw:
                continue
            out.append(_entry(panel.get("title") or "(untitled panel id %s)" % panel.get("id"),
                              t.get("refId", "?"), raw, variables))
    return out


def _entry(panel, ref, raw, variables):
    e = {"panel": panel, "ref": ref, "raw": raw}
    try:
        e["expr"] = substitute(raw, variables)
    except UnknownVariable as exc:
        e["expr"] = raw
        e["error"] = "unknown Grafana variable $%s" % exc.args[0]
    return e


def query(base, expr, timeout):
    """Instant query. Returns (series_count, all_nan, error_or_None)."""
    url = base.rstrip("/") + "/api/v1/query"
    data = urllib.parse.urlencode({"query": expr}).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        # Prometheus answers 400/422 with a JSON error body for bad queries.
        try:
            body = json.load(exc)
        except Exception:
            return 0, False, "HTTP %s" % exc.code
    if body.get("status") != "success":
        return 0, False, "%s: %s" % (body.get("errorType", "error"), body.get("error", "?"))
    result = body["data"]["result"]
    rtype = body["data"]["resultType"]
    if rtype in ("scalar", "string"):
        return 1, False, None
    values = []
    for s in result:
        if "value" in s:
            values.append(s["value"][1])
        elif "values" in s:
            values.extend(v[1] for v in s["values"])
        elif "histogram" in s:
            values.append("0")
    all_nan = bool(values) and all(v in ("NaN", "+Inf", "-Inf") for v in values)
    return len(result), all_nan, None


def check_reachable(base, timeout):
    url = base.rstrip("/") + "/api/v1/status/buildinfo"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            json.load(resp)
        return None
    except Exception as exc:  # noqa: BLE001 - report whatever went wrong
        return str(exc)


def print_table(rows):
    headers = ("panel title", "expr", "series count")
    w0 = max([len(headers[0])] + [len(r[0]) for r in rows])
    w1 = max([len(headers[1])] + [len(r[1]) for r in rows])
    fmt = "%-{0}s | %-{1}s | %s".format(w0, w1)
    print(fmt % headers)
    print("-" * w0 + "-+-" + "-" * w1 + "-+-" + "-" * len(headers[2]))
    for r in rows:
        print(fmt % r)


def parse_var(s):
    if "=" not in s:
        raise argparse.ArgumentTypeError("expected NAME=VALUE, got %r" % s)
    k, v = s.split("=", 1)
    return k.lstrip("$"), v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dashboard", nargs="?", default="dashboards/webd.json",
                    help="dashboard JSON file (default: %(default)s)")
    ap.add_argument("--prometheus", metavar="URL",
                    help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--var", action="append", type=parse_var, default=[], metavar="NAME=VALUE",
                    help="override a Grafana variable (repeatable), e.g. --var instance=127.0.0.1:9180")
    ap.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                    help="keep retrying queries without data for up to SECONDS "
                         "(rate() needs two scrapes inside the window)")
    ap.add_argument("--timeout", type=float, default=10, metavar="SECONDS",
                    help="HTTP timeout per request (default: %(default)s)")
    ap.add_argument("--list", action="store_true",
                    help="print the substituted queries as JSON lines and exit; no Prometheus needed")
    args = ap.parse_args(argv)

    variables = dict(DEFAULT_VARS)
    variables.update(dict(args.var))

    try:
        with open(args.dashboard, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as exc:
        print("error: cannot read dashboard %s: %s" % (args.dashboard, exc), file=sys.stderr)
        return 2
    if isinstance(dashboard, dict) and isinstance(dashboard.get("dashboard"), dict):
        dashboard = dashboard["dashboard"]  # API export wrapper {"dashboard": {...}, "meta": ...}

    entries = extract_queries(dashboard, variables)
    if args.list:
        for e in entries:
            print(json.dumps({k: e[k] for k in ("panel", "ref", "expr", "error") if k in e}))
        return 1 if any("error" in e for e in entries) else 0

    if not args.prometheus:
        ap.error("--prometheus URL is required (or use --list)")
    if not entries:
        print("error: no queries found in %s" % args.dashboard, file=sys.stderr)
        return 1
    err = check_reachable(args.prometheus, args.timeout)
    if err:
        print("error: Prometheus at %s is unreachable: %s" % (args.prometheus, err), file=sys.stderr)
        return 2

    deadline = time.monotonic() + args.wait
    results = {}
    pending = [i for i, e in enumerate(entries) if "error" not in e]
    while True:
        for i in pending:
            try:
                results[i] = query(args.prometheus, entries[i]["expr"], args.timeout)
            except Exception as exc:  # noqa: BLE001 - network errors mid-run
                results[i] = (0, False, str(exc))
        pending = [i for i in pending if results[i][0] == 0]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    rows, problems, notes = [], [], []
    for i, e in enumerate(entries):
        title = e["panel"] if e["ref"] in ("A", "var") else "%s [%s]" % (e["panel"], e["ref"])
        if "error" in e:
            count, all_nan, error = 0, False, e["error"]
        else:
            count, all_nan, error = results[i]
        rows.append((title, e["expr"], "ERROR" if error else str(count)))
        if error:
            problems.append("%s: %s\n    %s" % (title, error, e["expr"]))
        elif count == 0:
            problems.append("%s: no data\n    %s" % (title, e["expr"]))
        elif all_nan:
            notes.append("%s: every value is NaN/Inf right now (e.g. no traffic in the window)" % title)
    print_table(rows)
    print()
    for n in notes:
        print("note: " + n)
    if problems:
        print("FAIL: %d of %d queries returned no data or an error:" % (len(problems), len(entries)))
        for p in problems:
            print("  - " + p)
        return 1
    print("OK: all %d queries returned data" % len(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
