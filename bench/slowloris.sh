#!/usr/bin/env bash
# bench/slowloris.sh — does a slowloris on two services slow a third?
#
#   bench/slowloris.sh [--rounds 5] [--seconds 10] [--attackers 5000] [--reconnect] [--no-cgroup] [--no-build]
#
# One release daemon, default limits, three services: `plain` (/bin/cat,
# direct), `proxy` (/bin/cat behind a PROXY v1 header, proxy_timeout = 5)
# and `tls` (/bin/cat over TLS, handshake_timeout = 10). Each round runs
# the same measured loop (loadgen rate against `plain`, 16 at a time, for
# the same number of seconds) twice: alone, and while `loadgen slowloris`'s
# 5,000 connections (half on `proxy`, half on `tls`, opened at 2,500/s, the
# loop starting once all are open) send one byte a second. With
# --reconnect a connection the daemon cut is opened again a second later,
# so 5,000 stay open: then the daemon also takes ~5,000 ÷ timeout new
# connections a second.
# The order of the two alternates from round to round. Pass: the median of
# the per-round ratios attacked ÷ alone ≥ 0.9, no failure in the loop, and every
# attacker the daemon accepted cut at its timeout (+1.5 s at most).
# The daemon runs in its own cpu cgroup, as under the packaged systemd unit
# (CPUWeight=), unless --no-cgroup or none can be made.
#
# Loopback only; processes stopped by their PID; every loop is bounded.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${WININETD_BIN:-$REPO/target/release/wininetd}
LOADGEN=${LOADGEN:-$REPO/target/release/loadgen}
ROUNDS=5
SECONDS_LOOP=10
RECONNECT=
ATTACKERS=5000
BUILD=1
CGROUP=1
PROXY_TIMEOUT=5
TLS_TIMEOUT=10
SLACK=1.5
while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --seconds) SECONDS_LOOP=$2; shift ;;
    --reconnect) RECONNECT=--reconnect ;;
    --attackers) ATTACKERS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --no-cgroup) CGROUP=0 ;;
    *) echo "usage: $0 [--rounds N] [--seconds N] [--attackers N] [--reconnect] [--no-cgroup] [--no-build]" >&2; exit 2 ;;
    esac
    shift
done
[[ $ROUNDS =~ ^[1-9][0-9]?$ && $SECONDS_LOOP =~ ^[1-9][0-9]?$ && $ATTACKERS =~ ^[1-9][0-9]{0,4}$ ]] ||
    { echo "bad numbers" >&2; exit 2; }
for tool in python3 openssl prlimit curl; do
    command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
if ((BUILD)); then
    (cd "$REPO" && nice -n 10 cargo build --release -p wininetd -p loadgen)
fi
[[ -x $BIN && -x $LOADGEN ]] || { echo "no binaries: $BIN, $LOADGEN" >&2; exit 2; }
OUT=$REPO/bench/results/slowloris-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

WORK=$(mktemp -d)
DAEMON=
ATTACKER=
CG=
cleanup() {
    [[ -n $ATTACKER ]] && kill "$ATTACKER" 2>/dev/null || true
    [[ -n $DAEMON ]] && kill "$DAEMON" 2>/dev/null || true
    if [[ -n $CG ]]; then
        for _ in $(seq 50); do rmdir "$CG" 2>/dev/null && break; sleep 0.1; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

(
    cd "$WORK" &&
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key &&
        openssl req -x509 -new -key ca.key -subj "/CN=slowloris CA" -days 2 \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -out ca.pem &&
        openssl ecparam -name prime256v1 -genkey -noout -out leaf.key &&
        openssl req -new -key leaf.key -subj "/CN=localhost" -out leaf.csr &&
        printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >leaf.ext &&
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 2 \
            -extfile leaf.ext -out leaf.pem &&
        chmod 600 ca.key leaf.key
) >"$OUT/cert.log" 2>&1 || { echo "making the certificate failed: $OUT/cert.log" >&2; exit 1; }

read -r P_PLAIN P_PROXY P_TLS P_METRICS < <(python3 -c '
import socket
s = [socket.socket() for _ in range(4)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')

cat >"$WORK/slowloris.toml" <<END
# bench/slowloris.sh: default limits (max_connections = 4096)
[[service]]
name = "plain"
port = $P_PLAIN
bind = ["127.0.0.1"]
command = ["/bin/cat"]

[[service]]
name = "proxy"
port = $P_PROXY
bind = ["127.0.0.1"]
command = ["/bin/cat"]
proxy_protocol = "v1"
proxy_from = ["127.0.0.1"]
proxy_timeout = $PROXY_TIMEOUT

[[service]]
name = "tls"
port = $P_TLS
bind = ["127.0.0.1"]
command = ["/bin/cat"]
[service.tls]
cert = "$WORK/leaf.pem"
key = "$WORK/leaf.key"
handshake_timeout = $TLS_TIMEOUT

[[service]]
name = "metrics"
port = $P_METRICS
bind = ["127.0.0.1"]
internal = "metrics"
END
cp "$WORK/slowloris.toml" "$OUT/"
"$BIN" --check --cfgfile "$WORK/slowloris.toml" >"$OUT/check.txt" 2>&1 || { cat "$OUT/check.txt" >&2; exit 1; }

# Daemon, loop and attacker at the same niceness: none is favoured.
nice -n 10 prlimit --nofile="$(ulimit -Hn)" "$BIN" --debug --cfgfile "$WORK/slowloris.toml" 2>"$OUT/daemon.log" &
DAEMON=$!
PLACED="the bench's cgroup"
if ((CGROUP)) && [[ -w /sys/fs/cgroup/cpu/cgroup.procs ]]; then
    CG=/sys/fs/cgroup/cpu/wininetd-slowloris-$$
    if mkdir "$CG" && echo "$DAEMON" >"$CG/cgroup.procs"; then PLACED="its own cpu cgroup"; else CG=; fi
fi
for _ in $(seq 100); do
    grep -q serving "$OUT/daemon.log" && break
    sleep 0.1
done
grep -q serving "$OUT/daemon.log" || { echo "the daemon did not start: $OUT/daemon.log" >&2; exit 1; }
echo "slowloris: $ROUNDS rounds, loop ${SECONDS_LOOP} s C=16 on plain, $ATTACKERS attackers ${RECONNECT:-(no reconnect)}; daemon $DAEMON in $PLACED ($("$BIN" --version | head -1)); $OUT"
echo "started $(date -u '+%F %H:%M') UTC; load average $(cut -d' ' -f1-3 /proc/loadavg)"

: >"$OUT/loop.jsonl"
measure() { # $1: label, $2: round → one JSON line appended to loop.jsonl
    # Exit 1 only says connections were left unstarted at the time limit,
    # which is how a loop of a fixed duration ends: the report counts real failures.
    local before
    before=$(wc -l <"$OUT/loop.jsonl")
    nice -n 10 "$LOADGEN" rate --target "127.0.0.1:$P_PLAIN" -n 1000000 -c 16 --max-seconds "$SECONDS_LOOP" \
        --server-pid "$DAEMON" --server wininetd --scenario "$1" --round "$2" >>"$OUT/loop.jsonl" 2>>"$OUT/loadgen.log" || true
    (($(wc -l <"$OUT/loop.jsonl") == before + 1)) || { echo "loadgen wrote no result" >&2; exit 1; }
}

attacked() { # $1: round
    rm -f "$WORK/ready"
    nice -n 10 prlimit --nofile="$(ulimit -Hn)" "$LOADGEN" slowloris \
        --proxy-port "$P_PROXY" --tls-port "$P_TLS" --connections "$ATTACKERS" \
        --max-seconds 300 $RECONNECT --ready "$WORK/ready" --summary "$OUT/attack-$1.json" &
    ATTACKER=$!
    for _ in $(seq 600); do [[ -e $WORK/ready ]] && break; sleep 0.1; done
    [[ -e $WORK/ready ]] || { echo "the attacker did not open its connections in 60 s" >&2; exit 1; }
    local t0=$SECONDS
    measure attacked "$1"
    # Held until every kind has reached its timeout at least once.
    while ((SECONDS - t0 < TLS_TIMEOUT + 6)); do sleep 1; done
    kill -TERM "$ATTACKER"
    wait "$ATTACKER" || true
    ATTACKER=
    sleep 3 # the daemon drops what is left
}

for r in $(seq "$ROUNDS"); do
    if ((r % 2)); then
        measure alone "$r"
        attacked "$r"
    else
        attacked "$r"
        measure alone "$r"
    fi
    echo "round $r done ($(date -u +%H:%M:%S))"
done
curl -s --max-time 10 "http://127.0.0.1:$P_METRICS/metrics" >"$OUT/metrics.txt"
echo "ended $(date -u '+%F %H:%M') UTC; load average $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$OUT" "$PROXY_TIMEOUT" "$TLS_TIMEOUT" "$SLACK" <<'PY' | tee "$OUT/verdict.txt"
import json, statistics, sys, glob, re
out, ptime, ttime, slack = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
lines = [json.loads(l) for l in open(f"{out}/loop.jsonl") if l.strip()]
rate, cpu = {}, {}
failures = 0
for l in lines:
    rate.setdefault(l["round"], {})[l["scenario"]] = l["conns_per_s"]
    cpu.setdefault(l["round"], {})[l["scenario"]] = l.get("server_cpu_us_per_conn", float("nan"))
    failures += l["failures"] - l["not_started"]
print("| round | alone conns/s | attacked conns/s | ratio | daemon CPU µs/conn alone | attacked |\n|---:|---:|---:|---:|---:|---:|")
ratios = []
for r in sorted(rate):
    a, b = rate[r]["alone"], rate[r]["attacked"]
    ratios.append(b / a)
    print(f"| {r} | {a:.0f} | {b:.0f} | {b / a:.2f} | {cpu[r]['alone']:.1f} | {cpu[r]['attacked']:.1f} |")
ma = statistics.median(v["alone"] for v in rate.values())
mb = statistics.median(v["attacked"] for v in rate.values())
# Judged as bench/run.sh judges ratios: per round (two loops minutes
# apart at most, on the same machine weather), then the median.
ratio = statistics.median(ratios)
print(f"| median | {ma:.0f} | {mb:.0f} | {ratio:.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}; ratio of the medians {mb / ma:.2f}) |")
ok = ratio >= 0.9 and failures == 0
print(f"loop failures: {failures}")
timeouts = {"proxy": ptime, "tls": ttime}
for f in sorted(glob.glob(f"{out}/attack-*.json"), key=lambda p: int(re.findall(r"\d+", p)[-1])):
    s = json.load(open(f))
    parts = []
    for k in ("proxy", "tls"):
        k_s = s[k]
        cut = k_s["cut"]
        parts.append(f"{k}: opened {k_s['opened']}, refused at once {k_s['refused']}, "
                     f"connect failed {k_s['connect_failed']}, cut {cut.get('n', 0)} "
                     f"after {cut.get('min', '-')}-{cut.get('max', '-')} s (p50 {cut.get('p50', '-')}), "
                     f"open at the end {s['still_open'][k]} (oldest {s['still_open_oldest_s'][k]} s)")
        late = cut and cut["max"] > timeouts[k] + slack
        early = cut and cut["min"] < timeouts[k] - 0.5
        stuck = s["still_open_oldest_s"][k] > timeouts[k] + slack
        if late or early or stuck or not cut:
            ok = False
            parts[-1] += "  <- NOT cut at its timeout"
    print(f"{f.rsplit('/', 1)[1]} ({s['seconds']} s, attacker CPU {s['cpu_s']} s):\n  " + "\n  ".join(parts))
outcomes = {}
for line in open(f"{out}/metrics.txt"):
    m = re.match(r'wininetd_connections_total\{service="(\w+)",outcome="(\w+)"\} (\d+)', line)
    if m and int(m.group(3)):
        outcomes.setdefault(m.group(1), []).append(f"{m.group(2)} {m.group(3)}")
for svc, o in outcomes.items():
    print(f"daemon counted, {svc}: " + ", ".join(o))
print(f"attacked ÷ alone, median of the per-round ratios: {ratio:.2f} (needs >= 0.90) -> {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
exit "${PIPESTATUS[0]}"
