#!/usr/bin/env python3
"""Mixed traffic against a running wininetd for the soak (bench/soak.sh).

One process: a pacer hands exchanges of every kind, round-robin, to a few
worker threads at a steady rate; every 30 s the config is rewritten (one
harmless value changes) and the daemon gets SIGHUP; every 10 s the traffic
pauses until nothing is in flight (so programs still running are leaks, not
traffic), and the daemon's VmRSS, descriptors, threads and children are
written as one CSV line with the exchange counts so far.

Loopback only. Every socket has a timeout; every loop is bounded by the
run's end.
"""

import argparse
import csv
import errno
import os
import random
import signal
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

IO_TIMEOUT = 10.0
SAMPLE_EVERY = 10.0
RELOAD_EVERY = 30.0
MAX_IN_FLIGHT = 16
# What a send or shutdown meets on a connection the daemon closed at once.
CLOSED_BY_PEER = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN)


def payload(rng):
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2048)))


def read_to_eof(s, limit=1 << 20):
    got = bytearray()
    while len(got) <= limit:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def tcp(port, source=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(IO_TIMEOUT)
    if source:
        s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


class Refused(Exception):
    """The daemon closed the connection without serving it."""


def echo_through(port, data, prefix=b""):
    with tcp(port) as s:
        s.sendall(prefix + data)
        s.shutdown(socket.SHUT_WR)
        got = read_to_eof(s)
    if got != data:
        raise AssertionError(f"echo of {len(data)} B came back as {len(got)} B")


class Traffic:
    def __init__(self, a):
        self.a = a
        self.ports = dict(p.split("=") for p in a.ports.split(","))
        self.ports = {k: int(v) for k, v in self.ports.items()}
        self.tls = ssl.create_default_context(cafile=a.ca)
        self.lock = threading.Lock()
        self.counts = {}  # kind -> [ok, refused, failed]
        self.failures = []
        self.in_flight = 0
        self.idle = threading.Condition(self.lock)
        self.kinds = [
            ("direct", self.direct),
            ("pipe", self.pipe),
            ("tls", self.tls_cat),
            ("proxy", self.proxy),
            ("udp_echo", self.udp_echo),
            ("internal_echo", self.internal_echo),
            ("daytime", self.daytime),
            ("metrics", self.metrics),
            ("denied", self.denied),
            ("proxy_refused", self.proxy_refused),
            ("rated", self.rated),
            ("direct", self.direct),
        ]

    # --- exchanges: return "ok" or "refused"; raise on a failure ---

    def direct(self, rng):
        echo_through(self.ports["direct"], payload(rng))
        return "ok"

    def pipe(self, rng):
        echo_through(self.ports["pipe"], payload(rng))
        return "ok"

    def tls_cat(self, rng):
        data = payload(rng)
        with tcp(self.ports["tls"]) as raw:
            s = self.tls.wrap_socket(raw, server_hostname="localhost")
            s.sendall(data)
            got = bytearray()
            while len(got) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            # close_notify ends cat's stdin; the daemon's close_notify follows.
            s.unwrap()
        if bytes(got) != data:
            raise AssertionError(f"TLS echo of {len(data)} B came back as {len(got)} B")
        return "ok"

    def proxy(self, rng):
        src = f"192.0.2.{rng.randint(1, 254)} 127.0.0.1 {rng.randint(1024, 65535)}"
        header = f"PROXY TCP4 {src} {self.ports['proxy']}\r\n".encode()
        echo_through(self.ports["proxy"], payload(rng), prefix=header)
        return "ok"

    def udp_echo(self, rng):
        data = payload(rng)[:512]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2.0)
            s.sendto(data, ("127.0.0.1", self.ports["udp_echo"]))
            got, _ = s.recvfrom(65536)
        if got != data:
            raise AssertionError("UDP echo differs")
        return "ok"

    def internal_echo(self, rng):
        echo_through(self.ports["internal_echo"], payload(rng))
        return "ok"

    def daytime(self, rng):
        with tcp(self.ports["daytime"]) as s:
            got = read_to_eof(s)
        if not got.endswith(b"\n") or len(got) < 10:
            raise AssertionError(f"daytime answered {got!r}")
        return "ok"

    def scrape(self):
        with tcp(self.ports["metrics"]) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            got = read_to_eof(s, 4 << 20)
        head, _, body = got.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"metrics answered {head[:40]!r}")
        return body.decode()

    def metrics(self, rng):
        if "wininetd_connections_total" not in self.scrape():
            raise AssertionError("no connections in the metrics")
        return "ok"

    def closed_unserved(self, port, source, prefix=b""):
        """A refusal: the daemon closes without a byte; sends may fail."""
        with tcp(port, source) as s:
            try:
                s.sendall(prefix + b"x")
                s.shutdown(socket.SHUT_WR)
                got = read_to_eof(s)
            except OSError as e:
                if e.errno not in CLOSED_BY_PEER:
                    raise
                got = b""
        if got:
            raise AssertionError(f"a refused client got {len(got)} B")
        return "refused"

    def denied(self, rng):
        return self.closed_unserved(self.ports["denied"], "127.0.0.2")

    def proxy_refused(self, rng):
        header = f"PROXY TCP4 192.0.2.1 127.0.0.1 4000 {self.ports['proxy']}\r\n"
        return self.closed_unserved(self.ports["proxy"], "127.0.0.3", header.encode())

    def rated(self, rng):
        """A service with rate = "2/s", hit more often: served or refused."""
        data = payload(rng)
        with tcp(self.ports["rated"]) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                got = read_to_eof(s)
            except OSError as e:
                if e.errno not in CLOSED_BY_PEER:
                    raise
                got = b""
        if got == data:
            return "ok"
        if not got:
            return "refused"
        raise AssertionError(f"rated echo of {len(data)} B came back as {len(got)} B")

    # --- running ---

    def run_one(self, kind, fn, seed):
        rng = random.Random(seed)
        try:
            result = fn(rng)
            column = 0 if result == "ok" else 1
        except Exception as e:  # every failure is counted and kept, never hidden
            column = 2
            with self.lock:
                if len(self.failures) < 200:
                    self.failures.append(f"{time.time():.3f} {kind}: {type(e).__name__}: {e}")
        with self.lock:
            self.counts.setdefault(kind, [0, 0, 0])[column] += 1
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.notify_all()

    def totals(self):
        with self.lock:
            ok = sum(c[0] for c in self.counts.values())
            refused = sum(c[1] for c in self.counts.values())
            failed = sum(c[2] for c in self.counts.values())
        return ok, refused, failed

    def quiesce(self, limit):
        with self.lock:
            return self.idle.wait_for(lambda: self.in_flight == 0, timeout=limit)


def proc_sample(pid):
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.strip()
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    children = zombies = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            children += 1
            zombies += fields[0] == "Z"
    return int(status["VmRSS"].split()[0]), fds, int(status["Threads"]), children, zombies


def reload_counts(text):
    ok = failed = 0
    for line in text.splitlines():
        if line.startswith("wininetd_config_reloads_total"):
            value = int(float(line.rsplit(" ", 1)[1]))
            if 'result="ok"' in line:
                ok = value
            elif 'result="failed"' in line:
                failed = value
    return ok, failed


def write_config(template, path, generation):
    text = open(template).read().replace("@GEN@", str(generation))
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--ports", required=True, help="kind=port,...")
    p.add_argument("--ca", required=True)
    p.add_argument("--template", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--rate", type=float, default=40, help="exchanges per second")
    p.add_argument("--csv", required=True)
    p.add_argument("--failures", required=True)
    p.add_argument("--counts", required=True)
    a = p.parse_args()
    if not (0 < a.minutes <= 240 and 0 < a.rate <= 1000):
        sys.exit("minutes in (0, 240], rate in (0, 1000]")

    t = Traffic(a)
    start = time.monotonic()
    end = start + a.minutes * 60
    interval = 1.0 / a.rate
    next_tick = start
    next_sample = start + SAMPLE_EVERY
    next_reload = start + RELOAD_EVERY
    generation = 0
    reloads_sent = 0
    behind = 0
    seq = 0
    out = open(a.csv, "w", newline="")
    w = csv.writer(out)
    w.writerow(["t_s", "rss_kib", "fds", "threads", "children", "zombies", "ok", "refused",
                "failed", "reloads_sent", "reloads_ok", "reloads_failed", "quiet"])
    pool = ThreadPoolExecutor(max_workers=8)
    while True:
        now = time.monotonic()
        if now >= next_sample or now >= end:
            # Nothing in flight: a program still alive now was not reaped.
            quiet = t.quiesce(5.0)
            time.sleep(0.3)
            rss, fds, threads, children, zombies = proc_sample(a.pid)
            try:
                r_ok, r_failed = reload_counts(t.scrape())
            except Exception as e:
                r_ok = r_failed = -1
                t.failures.append(f"{time.time():.3f} sampler scrape: {e}")
            ok, refused, failed = t.totals()
            w.writerow([round(now - start, 1), rss, fds, threads, children, zombies, ok,
                        refused, failed, reloads_sent, r_ok, r_failed, int(quiet)])
            out.flush()
            next_sample += SAMPLE_EVERY
            next_tick = max(next_tick, time.monotonic())
            if now >= end:
                break
            continue
        if now >= next_reload:
            generation += 1
            write_config(a.template, a.config, generation)
            os.kill(a.pid, signal.SIGHUP)
            reloads_sent += 1
            next_reload += RELOAD_EVERY
        if now < next_tick:
            time.sleep(min(next_tick, next_sample, next_reload, end) - now)
            continue
        next_tick += interval
        with t.lock:
            if t.in_flight >= MAX_IN_FLIGHT:
                behind += 1
                continue
            t.in_flight += 1
        kind, fn = t.kinds[seq % len(t.kinds)]
        pool.submit(t.run_one, kind, fn, seq)
        seq += 1
    pool.shutdown(wait=True)
    out.close()
    with open(a.failures, "w") as f:
        f.write("\n".join(t.failures) + ("\n" if t.failures else ""))
    with open(a.counts, "w") as f:
        f.write("kind,ok,refused,failed\n")
        for kind, (ok, refused, failed) in sorted(t.counts.items()):
            f.write(f"{kind},{ok},{refused},{failed}\n")
        f.write(f"_skipped_behind,{behind},0,0\n")
        f.write(f"_elapsed_s,{round(time.monotonic() - start, 1)},0,0\n")


if __name__ == "__main__":
    main()
