#!/usr/bin/env python3
"""Turns run.sh's output directory into markdown tables.

usage: analyze.py OUT N_KA N_CLOSE

Per-request figure = (load run total - idle run total) / N, per process role.
webd roles come from webd's own log (pids it prints at start); hyper-probe is one process.
"""
import collections
import glob
import os
import re
import sys

ROLES = ["daemon", "listener", "manager", "worker"]


def roles_from_log(path):
    text = open(path, errors="replace").read()
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    found = {}
    for role, pat in [
        ("daemon", r"webd starting pid=(\d+)"),
        ("listener", r"listener started pid=(\d+)"),
        ("manager", r"manager started pid=(\d+)"),
        ("worker", r"worker started worker=0 pid=(\d+)"),
    ]:
        m = re.search(pat, text)
        if m:
            found[int(m.group(1))] = role
    return found


def callgrind_totals(d, server):
    """{role: Ir} for one run directory."""
    out = collections.Counter()
    pids = roles_from_log(os.path.join(d, "server.log")) if server == "webd" else {}
    for f in glob.glob(os.path.join(d, "cg.*")):
        pid = int(f.rsplit(".", 1)[1])
        total = None
        for line in open(f, errors="replace"):
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
        if total is None:
            continue
        role = "hyper-probe" if server == "hyper" else pids.get(pid, "other")
        out[role] += total
    return out


def strace_totals(d, server):
    """({role: syscalls}, {role: Counter(name -> count)}) for one run directory."""
    counts = collections.Counter()
    names = collections.defaultdict(collections.Counter)
    pids = roles_from_log(os.path.join(d, "server.log")) if server == "webd" else {}
    for f in glob.glob(os.path.join(d, "st.*")):
        pid = int(f.rsplit(".", 1)[1])
        role = "hyper-probe" if server == "hyper" else pids.get(pid, "other")
        for line in open(f, errors="replace"):
            m = re.match(r"^(\w+)\(", line)
            if m:
                counts[role] += 1
                names[role][m.group(1)] += 1
    return counts, names


def runs(out, tool):
    base = os.path.join(out, tool)
    result = {}
    for d in sorted(glob.glob(os.path.join(base, "*-load"))):
        name = os.path.basename(d)[: -len("-load")]
        server, scen, rep = name.split("-")
        idle = os.path.join(base, name + "-idle")
        if os.path.isdir(idle):
            result[(server, scen, rep)] = (d, idle)
    return result


def fmt(x):
    return f"{x:,.0f}"


def main():
    out, n_ka, n_close = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    nreq = {"keepalive": n_ka, "close": n_close}

    cg = runs(out, "callgrind")
    if cg:
        print("## Instructions per request (callgrind Ir, user space only)\n")
        reps = sorted({k[2] for k in cg})
        per = {}  # (scen, row, rep) -> Ir/req
        raw = []
        for (server, scen, rep), (load, idle) in sorted(cg.items()):
            lt, it = callgrind_totals(load, server), callgrind_totals(idle, server)
            rows = ["hyper-probe"] if server == "hyper" else ROLES + (["other"] if "other" in lt or "other" in it else [])
            tree = 0.0
            for r in rows:
                v = (lt[r] - it[r]) / nreq[scen]
                label = r if server == "hyper" else f"webd {r}"
                per[(scen, label, rep)] = v
                tree += v
                raw.append((scen, rep, label, lt[r], it[r]))
            if server == "webd":
                per[(scen, "webd tree (sum)", rep)] = tree
        labels = ["hyper-probe"] + [f"webd {r}" for r in ROLES] + ["webd tree (sum)"]
        for scen in ["keepalive", "close"]:
            print(f"### {scen} (N={nreq[scen]})\n")
            print("| process | " + " | ".join(f"Ir/req {r}" for r in reps) + " |")
            print("|---|" + "---:|" * len(reps))
            for lab in labels:
                if any((scen, lab, r) in per for r in reps):
                    print(f"| {lab} | " + " | ".join(fmt(per.get((scen, lab, r), float('nan'))) for r in reps) + " |")
            print()
        print("Raw totals (Ir, load run and idle baseline):\n")
        print("| scenario | rep | process | load Ir | idle Ir |")
        print("|---|---|---|---:|---:|")
        for scen, rep, lab, l, i in raw:
            print(f"| {scen} | {rep} | {lab} | {fmt(l)} | {fmt(i)} |")
        print()

    st = runs(out, "strace")
    if st:
        print("## Syscalls per request (strace -f, load minus idle)\n")
        print("| scenario | process | syscalls/req | per request, by syscall |")
        print("|---|---|---:|---|")
        for (server, scen, rep), (load, idle) in sorted(st.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            (lc, ln), (ic, inames) = strace_totals(load, server), strace_totals(idle, server)
            rows = ["hyper-probe"] if server == "hyper" else ROLES
            tree = 0.0
            for r in rows:
                v = (lc[r] - ic[r]) / nreq[scen]
                tree += v
                diff = {k: (ln[r][k] - inames[r][k]) / nreq[scen] for k in set(ln[r]) | set(inames[r])}
                top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(diff.items(), key=lambda kv: -kv[1]) if v >= 0.005)
                label = r if server == "hyper" else f"webd {r}"
                print(f"| {scen} | {label} | {v:.2f} | {top} |")
            if server == "webd":
                print(f"| {scen} | webd tree (sum) | {tree:.2f} | |")
        print()


if __name__ == "__main__":
    main()
