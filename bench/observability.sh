#!/usr/bin/env bash
# bench/observability.sh — what watching wininetd costs. One binary, four
# daemons side by side, the rate run (loadgen rate through /bin/cat) in
# interleaved rounds, the daemon's own CPU per connection compared:
#   silent    WININETD_LOG=warn                       (no line per connection)
#   logged    default level (info), console sink to a file
#   scraped   WININETD_LOG=warn + internal = "metrics" scraped every second
#   both      default level + metrics scraped every second
#   journald  default level, logging to a journald socket (native protocol)
#   syslog    default level, logging to /dev/log
# The last two run in a private mount namespace (root) where the socket is
# one a small reader here drains, as a journal or syslog daemon would.
#
#   bench/observability.sh [--rounds N] [--connections N]
#
# Loopback only; every process started here is stopped by its PID; every
# loop is bounded. Build first: cargo build --release -p wininetd -p loadgen
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${WININETD_BIN:-$REPO/target/release/wininetd}
LOADGEN=${LOADGEN:-$REPO/target/release/loadgen}
ROUNDS=5
CONNS=3000
while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --connections) CONNS=$2; shift ;;
    *) echo "usage: $0 [--rounds N] [--connections N]" >&2; exit 2 ;;
    esac
    shift
done
[[ $ROUNDS =~ ^[1-9][0-9]{0,2}$ && $CONNS =~ ^[1-9][0-9]{0,6}$ ]] || { echo "bad numbers" >&2; exit 2; }
[[ -x $BIN && -x $LOADGEN ]] || { echo "build first: cargo build --release -p wininetd -p loadgen" >&2; exit 2; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 2; }

WORK=$(mktemp -d)
declare -A PID PORT
EXTRA_PIDS=()
cleanup() {
    for p in "${PID[@]}" "${EXTRA_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A datagram socket at $1 read and dropped (bounded: an hour at most).
drain() {
    python3 - "$1" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(1)
end = time.monotonic() + 3600
while time.monotonic() < end:
    try:
        s.recv(65536)
    except socket.timeout:
        pass
PY
    EXTRA_PIDS+=($!)
    for _ in $(seq 1 50); do [[ -S $1 ]] && return; sleep 0.1; done
    echo "the log reader did not start" >&2; exit 1
}

# Runs wininetd in a private mount namespace where the journald socket
# (journald) or /dev/log (syslog) is $sock.
as_daemon() { # sink sock args...
    local sink=$1 sock=$2; shift 2
    case $sink in
    journald) JOURNAL_STREAM=8:1 exec unshare -m --propagation private sh -c \
        'mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && : >/run/systemd/journal/socket &&
         mount --bind "$0" /run/systemd/journal/socket && exec "$@"' "$sock" "$@" ;;
    syslog) exec env -u JOURNAL_STREAM unshare -m --propagation private sh -c \
        'mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && : >/dev/log &&
         mount --bind "$0" /dev/log && exec "$@"' "$sock" "$@" ;;
    esac
}

start() { # name level metrics(0|1) [sink]
    local name=$1 level=$2 metrics=$3 sink=${4-console} port mport
    port=$(free_port)
    {
        printf '[[service]]\nname = "cat"\nport = %s\nbind = ["127.0.0.1"]\ncommand = ["/bin/cat"]\n' "$port"
        if ((metrics)); then
            mport=$(free_port)
            printf '\n[[service]]\nname = "metrics"\nport = %s\nbind = ["127.0.0.1"]\ninternal = "metrics"\n' "$mport"
        fi
    } >"$WORK/$name.toml"
    mkdir -p "$WORK/$name.run"
    if [[ $sink == console ]]; then
        WININETD_LOG=$level WININETD_RUN_DIR=$WORK/$name.run \
            "$BIN" --debug --cfgfile "$WORK/$name.toml" 2>"$WORK/$name.log" </dev/null >/dev/null &
    else
        drain "$WORK/$name.sock"
        (WININETD_LOG=$level WININETD_RUN_DIR=$WORK/$name.run \
            as_daemon "$sink" "$WORK/$name.sock" "$BIN" --cfgfile "$WORK/$name.toml") \
            2>"$WORK/$name.log" </dev/null >/dev/null &
    fi
    PID[$name]=$!
    PORT[$name]=$port
    "$LOADGEN" wait-listen --port "$port" --pid "${PID[$name]}" --timeout-ms 10000
    if ((metrics)); then
        # One scrape a second for as long as the run can last (bounded).
        (for _ in $(seq 1 3600); do curl -s -o /dev/null "http://127.0.0.1:$mport/metrics" || true; sleep 1; done) &
        EXTRA_PIDS+=($!)
    fi
}

start silent warn 0
start logged info 0
start scraped warn 1
start both info 1
start journald info 0 journald
start syslog info 0 syslog

NAMES=(silent logged scraped both journald syslog)
for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = 0; i < ${#NAMES[@]}; i++)); do
        name=${NAMES[$(((i + r) % ${#NAMES[@]}))]}
        "$LOADGEN" rate --target "127.0.0.1:${PORT[$name]}" -n "$CONNS" -c 16 --payload-size 64 \
            --server-pid "${PID[$name]}" --server "$name" --round "$r" >>"$WORK/results.jsonl" </dev/null
    done
done

echo "lines logged per connection (logged): $(($(grep -c ' ended ' "$WORK/logged.log" || true) / 1)) over $((ROUNDS * CONNS)) connections"
python3 - "$WORK/results.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["server"], []).append(r)
def med(name, key):
    v = [r[key] for r in by.get(name, []) if key in r]
    return statistics.median(v) if v else float("nan")
print("| daemon | own CPU µs/conn (median) | conns/s (median) | failures |")
print("|---|---|---|---|")
for n in ["silent", "logged", "scraped", "both", "journald", "syslog"]:
    fails = sum(r.get("failures", 0) for r in by.get(n, []))
    print(f"| {n} | {med(n, 'server_cpu_us_per_conn'):.1f} | {med(n, 'conns_per_s'):.0f} | {fails} |")
# Per-round differences: each round's pair saw the same machine weather.
def diffs(a, b):
    ra = {r["round"]: r.get("server_cpu_us_per_conn") for r in by.get(a, [])}
    rb = {r["round"]: r.get("server_cpu_us_per_conn") for r in by.get(b, [])}
    return [rb[k] - ra[k] for k in ra if k in rb and ra[k] is not None and rb[k] is not None]
for a, b, what in [("silent", "logged", "default logging, console"), ("silent", "journald", "default logging, journald"),
                   ("silent", "syslog", "default logging, syslog"), ("silent", "scraped", "metrics scraped every second")]:
    d = diffs(a, b)
    if d:
        print(f"{what}: {statistics.median(d):+.2f} µs/conn median over {len(d)} rounds (per round: {', '.join(f'{x:+.1f}' for x in d)})")
EOF
