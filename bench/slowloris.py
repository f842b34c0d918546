#!/usr/bin/env python3
"""Slowloris attackers for bench/slowloris.sh, in one process (epoll).

Opens N connections, split between a PROXY service (a v1 header
sent one byte a second) and a TLS service (a TLS record one byte a second),
opening them at a bounded pace. A connection the daemon closes is recorded
(how long it lived, how many bytes it sent); with --reconnect its slot
connects again a second later, so N stay open as in a real slowloris (the
daemon then sees N ÷ timeout new connections a second). Writes a ready file once all N were opened, and on SIGTERM (or at
--max-seconds) a JSON summary: refused (closed within a second of its
connect), cut (closed later: its lifetime), connect failures, still open.

Loopback only; every loop is bounded by --max-seconds.
"""

import argparse
import errno
import heapq
import json
import os
import selectors
import signal
import socket
import time

REFUSED_WITHIN = 1.0


def lifetimes_summary(values):
    if not values:
        return {}
    v = sorted(values)
    pick = lambda q: round(v[min(len(v) - 1, int(q * len(v)))], 2)  # noqa: E731
    return {"n": len(v), "min": round(v[0], 2), "p50": pick(0.5), "p99": pick(0.99),
            "max": round(v[-1], 2)}


class Conn:
    __slots__ = ("kind", "sock", "opened", "sent", "connected")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy-port", type=int, required=True)
    p.add_argument("--tls-port", type=int, required=True)
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--open-rate", type=int, default=2500, help="connects per second")
    p.add_argument("--reconnect", action="store_true")
    p.add_argument("--max-seconds", type=float, default=300)
    p.add_argument("--ready", required=True)
    p.add_argument("--summary", required=True)
    a = p.parse_args()
    if not (0 < a.connections <= 20000 and 0 < a.max_seconds <= 3600 and a.open_rate > 0):
        raise SystemExit("bad numbers")

    header = f"PROXY TCP4 192.0.2.7 127.0.0.1 40000 {a.proxy_port}\r\n".encode()
    # A TLS handshake record announcing 512 bytes; the rest never comes in time.
    record = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) * 16
    script = {"proxy": header, "tls": record}
    port = {"proxy": a.proxy_port, "tls": a.tls_port}

    sel = selectors.DefaultSelector()
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    start = time.monotonic()
    end = start + a.max_seconds
    stats = {k: {"opened": 0, "refused": 0, "cut": [], "connect_failed": 0, "cut_sent": []}
             for k in script}
    live = {}  # fd -> Conn
    waiting = [(start, i, "tls" if i % 2 else "proxy") for i in range(a.connections)]
    seq = a.connections
    opened_total = 0
    ready_written = False
    next_byte = start + 1.0

    def open_one(kind, now):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port[kind]))
        if err not in (0, errno.EINPROGRESS):
            stats[kind]["connect_failed"] += 1
            s.close()
            return False
        c = Conn()
        c.kind, c.sock, c.opened, c.sent, c.connected = kind, s, now, 0, False
        live[s.fileno()] = c
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        stats[kind]["opened"] += 1
        return True

    def closed(c, now, failed_connect=False):
        sel.unregister(c.sock)
        del live[c.sock.fileno()]
        c.sock.close()
        st = stats[c.kind]
        if failed_connect:
            st["connect_failed"] += 1
        elif now - c.opened < REFUSED_WITHIN:
            st["refused"] += 1
        else:
            st["cut"].append(now - c.opened)
            st["cut_sent"].append(c.sent)
        if not a.reconnect:
            return
        nonlocal seq
        seq += 1
        heapq.heappush(waiting, (now + 1.0, seq, c.kind))

    budget = 0.0
    last = start
    while not stop:
        now = time.monotonic()
        if now >= end:
            break
        # Open at a bounded pace.
        budget = min(budget + (now - last) * a.open_rate, a.open_rate / 10)
        last = now
        while waiting and budget >= 1 and waiting[0][0] <= now:
            _, _, kind = heapq.heappop(waiting)
            budget -= 1
            opened_total += 1
            if not open_one(kind, now) and a.reconnect:
                seq += 1
                heapq.heappush(waiting, (now + 1.0, seq, kind))
        if not ready_written and opened_total >= a.connections:
            with open(a.ready, "w") as f:
                f.write(f"{now - start:.1f}\n")
            ready_written = True
        # One byte a second to each connection.
        if now >= next_byte:
            for c in list(live.values()):
                if not c.connected:
                    continue
                data = script[c.kind]
                if c.sent < len(data):
                    try:
                        c.sock.send(data[c.sent:c.sent + 1])
                        c.sent += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed(c, now)
            next_byte += 1.0
            if next_byte < now:
                next_byte = now + 1.0
        timeout = max(0.0, min(next_byte, end) - time.monotonic())
        if waiting:
            timeout = min(timeout, max(0.0, waiting[0][0] - time.monotonic()), 0.01)
        for key, events in sel.select(timeout):
            c = key.data
            now = time.monotonic()
            if c.sock.fileno() not in live:
                continue
            if not c.connected and events & selectors.EVENT_WRITE:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    closed(c, now, failed_connect=True)
                    continue
                c.connected = True
                sel.modify(c.sock, selectors.EVENT_READ, c)
            if events & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    closed(c, now)
                # Bytes from the daemon (a TLS alert) are read and dropped.

    now = time.monotonic()
    out = {"seconds": round(now - start, 1), "still_open": {}, "still_open_oldest_s": {}}
    for k, st in stats.items():
        olds = [now - c.opened for c in live.values() if c.kind == k]
        out["still_open"][k] = len(olds)
        out["still_open_oldest_s"][k] = round(max(olds), 1) if olds else 0
        out[k] = {"opened": st["opened"], "refused": st["refused"],
                  "connect_failed": st["connect_failed"],
                  "cut": lifetimes_summary(st["cut"]),
                  "cut_bytes_sent": lifetimes_summary(st["cut_sent"])}
    ru = os.times()
    out["cpu_s"] = round(ru.user + ru.system, 2)
    with open(a.summary, "w") as f:
        json.dump(out, f)
    for c in list(live.values()):
        c.sock.close()


if __name__ == "__main__":
    main()
