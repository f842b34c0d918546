#!/usr/bin/env python3
"""What a held `pipe` relay session costs in kernel memory.

Starts wininetd (as root) with one `handoff = "pipe"` service running
/bin/cat on a free 127.0.0.1 port, in its own memory cgroup (v1), then opens
N connections that send without ever reading until nothing more is accepted
anywhere: the client's socket, the server's socket, both pipes and cat are
full. It reads the machine's /proc/meminfo, /proc/net/sockstat and the
cgroup's counters before and during, once per `pipe_budget` given, and
prints the deltas per session (one JSON line per budget on stdout, a summary
on stderr). Loopback only; every wait is bounded.

    bench/pipe-memory.py [--bin target/debug/wininetd] [--sessions 200]
                         [--budget 1GiB --budget 0]
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

CGROUP_ROOT = "/sys/fs/cgroup/memory"


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def tcp_mem_bytes():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                w = line.split()
                return int(w[w.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except OSError:
        return None


def readings(cg):
    m = meminfo()
    return {
        "used": m["MemTotal"] - m["MemAvailable"],
        "free": m["MemFree"],
        "tcp_mem": tcp_mem_bytes(),
        "cg_usage": read_int(f"{cg}/memory.usage_in_bytes"),
        "cg_kmem": read_int(f"{cg}/memory.kmem.usage_in_bytes"),
    }


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"wininetd did not listen on {port} within {limit} s")


def fill(port, sessions, stall=1.5, limit=120.0):
    """Opens the sessions and sends until a whole `stall` passes with no
    byte accepted on any of them; returns the sockets and bytes sent."""
    socks = []
    for _ in range(sessions):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        socks.append(s)
    chunk = b"x" * 65536
    sent = 0
    deadline = time.monotonic() + limit
    last_progress = time.monotonic()
    while time.monotonic() - last_progress < stall:
        if time.monotonic() > deadline:
            sys.exit(f"the sessions still took data after {limit} s")
        moved = 0
        for s in socks:
            while True:
                try:
                    n = s.send(chunk)
                except BlockingIOError:
                    break
                moved += n
                if n < len(chunk):
                    break
        if moved:
            sent += moved
            last_progress = time.monotonic()
        else:
            time.sleep(0.05)
    return socks, sent


def run(args, budget):
    port = free_port()
    work = tempfile.mkdtemp(prefix="wininetd-pipe-mem-")
    cfg = os.path.join(work, "p.toml")
    with open(cfg, "w") as f:
        f.write(
            f'pipe_budget = "{budget}"\nmax_connections = {args.sessions + 16}\n\n'
            f'[[service]]\nport = {port}\nbind = ["127.0.0.1"]\n'
            f'handoff = "pipe"\ncommand = ["/bin/cat"]\n'
        )
    cg = f"{CGROUP_ROOT}/wininetd-pipe-bench-{os.getpid()}"
    os.mkdir(cg)
    log = open(os.path.join(work, "daemon.log"), "w")
    env = dict(os.environ, WININETD_LOG="warn")
    daemon = subprocess.Popen(
        [args.bin, "--debug", "--kill-on-stop", "--cfgfile", cfg],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
    )
    socks = []
    try:
        with open(f"{cg}/cgroup.procs", "w") as f:
            f.write(str(daemon.pid))
        wait_listening(port)
        time.sleep(0.5)
        before = readings(cg)
        t0 = time.monotonic()
        socks, sent = fill(port, args.sessions)
        filled_s = time.monotonic() - t0
        time.sleep(1.0)
        during = readings(cg)
        n = args.sessions
        per = {k: (during[k] - before[k]) / n
               for k in before if before[k] is not None and during[k] is not None}
        result = {
            "scenario": "pipe-memory",
            "pipe_budget": budget,
            "sessions": n,
            "client_bytes_sent_per_session": sent / n,
            "fill_seconds": round(filled_s, 2),
            "per_session_bytes": per,
            "before": before,
            "during": during,
        }
        print(json.dumps(result))
        mib = 1 << 20
        print(
            f"pipe_budget={budget}: {n} sessions, each took {sent / n / mib:.2f} MiB from its "
            f"client before stalling; per session: machine memory in use "
            f"{per['used'] / mib:+.2f} MiB, of it TCP socket memory (both ends) "
            f"{per['tcp_mem'] / mib:+.2f} MiB; wininetd's cgroup {per.get('cg_usage', 0) / mib:+.2f} MiB "
            f"(kmem {per.get('cg_kmem', 0) / mib:+.2f} MiB)",
            file=sys.stderr,
        )
    finally:
        for s in socks:
            # RST rather than FIN: nothing left in the kernel after us.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        # Programs end as their pipes close; the group empties.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.rmdir(cg)
                break
            except OSError:
                time.sleep(0.1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default="target/debug/wininetd")
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--budget", action="append",
                   help='pipe_budget values to compare (default: "1GiB" and "0")')
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the cgroup, and the limits that apply to root")
    if not os.path.isdir(CGROUP_ROOT):
        sys.exit(f"{CGROUP_ROOT} (cgroup v1 memory controller) is needed")
    if not 1 <= args.sessions <= 4000:
        sys.exit("--sessions is 1..4000")
    for budget in args.budget or ["1GiB", "0"]:
        run(args, budget)


if __name__ == "__main__":
    main()
