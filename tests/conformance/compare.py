#!/usr/bin/env python3
"""Runs REDbot and HTTPolice against two servers serving the same files and prints, in
markdown, what each checker says of each and where they differ.

    compare.py OUT_DIR NAME=URL NAME=URL

REDbot checks each path (its HAR output carries every note with its level); HTTPolice
reads those same HAR exchanges, and also raw request/response streams of edge cases sent
here on a connection each. Exit status 1 when the first server has a REDbot note of level
BAD (an error), else 0.
"""
import json
import os
import re
import socket
import subprocess
import sys

PATHS = ["/", "/index.html", "/style.css", "/app.js", "/1k.bin", "/sub/", "/sub", "/missing.html"]

# Edge cases: raw request bytes, each on its own connection.
UA = b"User-Agent: webd-conformance\r\n"
RAW = {
    "get": b"GET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "head": b"HEAD /style.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "gzip": b"GET /style.css HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    "range": b"GET /1k.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-99\r\nConnection: close\r\n\r\n",
    "ranges": b"GET /1k.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9,500-509\r\nConnection: close\r\n\r\n",
    "range-416": b"GET /1k.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=5000-\r\nConnection: close\r\n\r\n",
    "if-match-412": b"GET /1k.bin HTTP/1.1\r\nHost: t\r\nIf-Match: \"nope\"\r\nConnection: close\r\n\r\n",
    "ius-412": b"GET /1k.bin HTTP/1.1\r\nHost: t\r\nIf-Unmodified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\nConnection: close\r\n\r\n",
    "ims-304": b"GET /1k.bin HTTP/1.1\r\nHost: t\r\nIf-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\nConnection: close\r\n\r\n",
    "options-star": b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "post": b"POST /index.html HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    "chunked-post": b"POST /index.html HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "unknown-method": b"BREW /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "http10": b"GET /index.html HTTP/1.0\r\n\r\n",
    "no-host": b"GET /index.html HTTP/1.1\r\nConnection: close\r\n\r\n",
    "bad-host": b"GET /index.html HTTP/1.1\r\nHost: a b/c\r\nConnection: close\r\n\r\n",
    "missing": b"GET /missing.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "dotdot": b"GET /../etc/passwd HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "dir-redirect": b"GET /sub HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
}


def redbot_notes(redbot, url, har_path):
    out = subprocess.run([redbot, "-o", "har", url], capture_output=True, timeout=60, check=False)
    try:
        har = json.loads(out.stdout)
    except ValueError:
        return [("BAD", "REDBOT_FAILED", out.stderr.decode(errors="replace").strip()[-200:])]
    with open(har_path, "w", encoding="utf-8") as f:
        json.dump(clean_har(har), f)
    notes = []
    for entry in har["log"]["entries"]:
        for m in entry.get("_red_messages", []):
            notes.append((m["level"], m["note_id"], m["summary"]))
    return notes


def clean_har(har):
    """REDbot's HAR keeps the space after each header's colon and leaves out the Host it
    sent; HTTPolice would report both as the server's errors."""
    for entry in har["log"]["entries"]:
        for message in (entry["request"], entry["response"]):
            for header in message["headers"]:
                header["value"] = header["value"].strip()
        request = entry["request"]
        if not any(h["name"].lower() == "host" for h in request["headers"]):
            host = request["url"].split("//", 1)[1].split("/", 1)[0]
            request["headers"].insert(0, {"name": "Host", "value": host})
    return har


def with_user_agent(request):
    """Every request names its client, so HTTPolice's notes are about the server."""
    head_end = request.index(b"\r\n\r\n") + 2
    return request[:head_end] + UA + request[head_end:]


def raw_exchange(host, port, request, timeout=3.0):
    chunks = []
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request)
        try:
            while len(b"".join(chunks)) < 1 << 20:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except socket.timeout:
            pass
    return b"".join(chunks)


def httpolice_notices(httpolice, fmt, paths):
    out = subprocess.run([httpolice, "-i", fmt, "-o", "text", *paths], capture_output=True, timeout=120, check=False)
    text = out.stdout.decode(errors="replace")
    # Lines look like "E 1038 Bad JSON body" under "------------ request: ..." headings.
    notices, current = [], ""
    for line in text.splitlines():
        if line.startswith("------------"):
            current = line.strip("- ")
        elif re.match(r"^[EC] \d+ ", line):
            notices.append((line[0], line[2:].strip(), current))
    if out.returncode not in (0, 1) and not text:
        notices.append(("E", "httpolice failed: " + out.stderr.decode(errors="replace")[-200:], ""))
    return notices


def main():
    out_dir, servers = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    venv_bin = os.path.dirname(sys.executable)
    redbot, httpolice = os.path.join(venv_bin, "redbot"), os.path.join(venv_bin, "httpolice")
    results = {}
    for name, base in servers:
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        hars, streams = [], []
        notes = {}
        for path in PATHS:
            har = os.path.join(out_dir, name, "redbot" + path.replace("/", "_") + ".har")
            notes[path] = redbot_notes(redbot, base + path, har)
            hars.append(har)
        hostport = base.split("//", 1)[1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        statuses = {}
        for case, request in RAW.items():
            request = with_user_agent(request)
            req_path = os.path.join(out_dir, name, case + ".req")
            resp_path = os.path.join(out_dir, name, case + ".resp")
            response = raw_exchange(host, int(port), request)
            with open(req_path, "wb") as f:
                f.write(request)
            with open(resp_path, "wb") as f:
                f.write(response)
            streams += [req_path, resp_path]
            statuses[case] = response.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed, no answer)"
        results[name] = {
            "notes": notes,
            "statuses": statuses,
            "police_har": httpolice_notices(httpolice, "har", [h for h in hars if os.path.getsize(h) > 0]),
            "police_raw": httpolice_notices(httpolice, "streams", streams),
        }
    names = [n for n, _ in servers]
    print("## REDbot: notes of level WARN or BAD\n")
    print("| path | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for path in PATHS:
        cells = []
        for n in names:
            bad = sorted({f"{lvl} {nid}" for lvl, nid, _ in results[n]["notes"][path] if lvl in ("WARN", "BAD")})
            cells.append("<br>".join(bad) or "none")
        print(f"| `{path}` | " + " | ".join(cells) + " |")
    print("\n## Edge cases: status line\n")
    print("| case | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for case in RAW:
        print(f"| {case} | " + " | ".join(results[n]["statuses"][case] for n in names) + " |")
    for kind, title in (("police_har", "HTTPolice on REDbot's exchanges"), ("police_raw", "HTTPolice on the edge cases")):
        print(f"\n## {title}: errors (E) and comments (C)\n")
        for n in names:
            # The edge cases' requests are wrong on purpose: only what is said of responses counts.
            notices = sorted(
                {f"{sev} {text}" for sev, text, where in results[n][kind] if kind == "police_har" or where.startswith("response")}
            )
            print(f"- {n}: " + ("; ".join(notices) if notices else "none"))
    first = names[0]
    errors = [(p, nid) for p, ns in results[first]["notes"].items() for lvl, nid, _ in ns if lvl == "BAD"]
    print(f"\nREDbot errors (BAD) on {first}: {len(errors)}" + (f": {errors}" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
