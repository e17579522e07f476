#!/usr/bin/env python3
"""bench/idle_conns.py HOST PORT COUNT PATH TIMEOUT_S [tls]: hold COUNT idle keep-alive connections.

Opens COUNT connections to HOST:PORT (at most IN_FLIGHT connecting or waiting for their
answer at a time, so no listen backlog overflows), sends one `GET PATH` on each, reads its
whole response (Content-Length), and leaves the connection open and idle. Then prints

    open N failed F

and waits for a line on stdin. On it (or on EOF, or after TIMEOUT_S), it counts the
connections the server has closed meanwhile, prints `still-open S`, closes them all and
exits. With `tls` each connection is HTTPS (a full handshake, certificate not checked).
Every phase is bounded by TIMEOUT_S. Used by bench/run.sh for memory per idle
connection (the server's RSS/PSS is read while the connections are held).
"""
import errno
import selectors
import socket
import ssl
import sys
import time

IN_FLIGHT = 256


class Conn:
    __slots__ = ("sock", "sent", "buf", "need", "shaking")

    def __init__(self, sock, shaking):
        self.sock = sock
        self.shaking = shaking  # a TLS handshake still to finish
        self.sent = 0
        self.buf = b""
        self.need = None  # total response bytes, once the head is in


def response_done(conn):
    if conn.need is None:
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        length = 0
        for line in conn.buf[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        conn.need = end + 4 + length
    return len(conn.buf) >= conn.need


def open_all(host, port, count, request, deadline, tls):
    sel = selectors.DefaultSelector()
    idle, failed, started = [], 0, 0
    while len(idle) + failed < count and time.monotonic() < deadline:
        while started < count and len(sel.get_map()) < IN_FLIGHT:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex((host, port))
            started += 1
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                failed += 1
                continue
            if tls:
                sock = tls.wrap_socket(sock, do_handshake_on_connect=False)
            sel.register(sock, selectors.EVENT_WRITE, Conn(sock, tls is not None))
        for key, _ in sel.select(timeout=0.5):
            conn = key.data
            try:
                if conn.shaking:
                    try:
                        conn.sock.do_handshake()
                        conn.shaking = False
                    except ssl.SSLWantReadError:
                        sel.modify(conn.sock, selectors.EVENT_READ, conn)
                        continue
                    except ssl.SSLWantWriteError:
                        sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
                        continue
                if conn.sent < len(request):
                    conn.sent += conn.sock.send(request[conn.sent:])
                    if conn.sent == len(request):
                        sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                chunk = conn.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before the response")
                conn.buf += chunk
                if response_done(conn):
                    sel.unregister(conn.sock)
                    conn.buf = b""
                    idle.append(conn.sock)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except OSError:
                sel.unregister(conn.sock)
                conn.sock.close()
                failed += 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()
        failed += 1
    failed += count - started
    return idle, failed


def closed_by_server(sock):
    if isinstance(sock, ssl.SSLSocket):
        sock = socket.socket(fileno=sock.fileno())  # the raw socket, for a peek past TLS
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            sock.detach()
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main():
    if len(sys.argv) not in (6, 7) or sys.argv[6:] not in ([], ["tls"]):
        sys.exit(__doc__)
    tls = None
    if sys.argv[6:] == ["tls"]:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    host, port, count, path, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    idle, failed = open_all(host, port, count, request, time.monotonic() + timeout, tls)
    print(f"open {len(idle)} failed {failed}", flush=True)
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    sel.select(timeout=timeout)
    still = sum(1 for s in idle if not closed_by_server(s))
    print(f"still-open {still}", flush=True)
    for s in idle:
        s.close()


if __name__ == "__main__":
    main()
