#!/usr/bin/env bash
# bench/soak.sh — wininetd under steady mixed traffic for a long time, with
# a reload every 30 s: does anything grow?
#
#   bench/soak.sh [--minutes 30] [--rate 40] [--out DIR] [--svg FILE] [--no-build]
#
# One release daemon serves: /bin/cat direct and pipe, /bin/cat over TLS
# and behind a PROXY v1 header, internal echo (TCP and UDP), daytime and
# metrics, a service that denies 127.0.0.2, and one with rate = "2/s".
# bench/soak-traffic.py drives all of them round-robin (refusals included:
# a denied source, a peer outside proxy_from, the rate), rewrites one env
# value and sends SIGHUP every 30 s, and every 10 s, with nothing in flight,
# samples the daemon's VmRSS, fds, threads and children into samples.csv.
# bench/soak-report.py judges them (final within 5 % of the 5-minute mark,
# 0 unexpected failures, every reload applied; exit code) and plots the SVG.
#
# Loopback only; the daemon is stopped by its PID; every loop is bounded.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${WININETD_BIN:-$REPO/target/release/wininetd}
MINUTES=30
RATE=40
OUT=
SVG=
BUILD=1
while (($#)); do
    case $1 in
    --minutes) MINUTES=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --out) OUT=$2; shift ;;
    --svg) SVG=$2; shift ;;
    --no-build) BUILD=0 ;;
    *) echo "usage: $0 [--minutes N] [--rate R] [--out DIR] [--svg FILE] [--no-build]" >&2; exit 2 ;;
    esac
    shift
done
[[ $MINUTES =~ ^[0-9]+$ && $MINUTES -ge 1 && $MINUTES -le 240 ]] || { echo "--minutes: 1 to 240" >&2; exit 2; }
[[ $RATE =~ ^[0-9]+$ && $RATE -ge 1 && $RATE -le 1000 ]] || { echo "--rate: 1 to 1000" >&2; exit 2; }
for tool in python3 openssl prlimit; do
    command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
if ((BUILD)) && [[ -z ${WININETD_BIN:-} ]]; then
    (cd "$REPO" && nice -n 10 cargo build --release --bin wininetd)
fi
[[ -x $BIN ]] || { echo "no binary at $BIN" >&2; exit 2; }
OUT=${OUT:-$REPO/bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SVG=${SVG:-$OUT/soak.svg}

WORK=$(mktemp -d)
DAEMON=
cleanup() {
    [[ -n $DAEMON ]] && kill "$DAEMON" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

(
    cd "$WORK" &&
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key &&
        openssl req -x509 -new -key ca.key -subj "/CN=soak CA" -days 2 \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -out ca.pem &&
        openssl ecparam -name prime256v1 -genkey -noout -out leaf.key &&
        openssl req -new -key leaf.key -subj "/CN=localhost" -out leaf.csr &&
        printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >leaf.ext &&
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 2 \
            -extfile leaf.ext -out leaf.pem &&
        chmod 600 ca.key leaf.key
) >"$OUT/cert.log" 2>&1 || { echo "making the certificate failed: $OUT/cert.log" >&2; exit 1; }

# Ten ports free for TCP (the UDP echo's also for UDP), held until all are chosen.
read -r P_DIRECT P_PIPE P_TLS P_PROXY P_UDP P_ECHO P_DAYTIME P_METRICS P_DENIED P_RATED < <(python3 - <<'PY'
import socket
held, ports = [], []
while len(ports) < 10:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); held.append(t)
    port = t.getsockname()[1]
    if len(ports) == 4:  # the UDP echo's port
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            continue
        held.append(u)
    ports.append(port)
print(*ports)
PY
)

cat >"$WORK/soak.toml.in" <<END
# bench/soak.sh; @GEN@ is the reload generation
max_connections = 512

[[service]]
name = "direct"
port = $P_DIRECT
bind = ["127.0.0.1"]
command = ["/bin/cat"]
handoff = "direct"
env = { SOAK_GENERATION = "@GEN@" }

[[service]]
name = "pipe"
port = $P_PIPE
bind = ["127.0.0.1"]
command = ["/bin/cat"]
handoff = "pipe"

[[service]]
name = "tls"
port = $P_TLS
bind = ["127.0.0.1"]
command = ["/bin/cat"]
[service.tls]
cert = "$WORK/leaf.pem"
key = "$WORK/leaf.key"

[[service]]
name = "proxy"
port = $P_PROXY
bind = ["127.0.0.1"]
command = ["/bin/cat"]
proxy_protocol = "v1"
proxy_from = ["127.0.0.1"]

[[service]]
name = "udp-echo"
port = $P_UDP
bind = ["127.0.0.1"]
protocol = "udp"
internal = "echo"

[[service]]
name = "echo"
port = $P_ECHO
bind = ["127.0.0.1"]
internal = "echo"

[[service]]
name = "daytime"
port = $P_DAYTIME
bind = ["127.0.0.1"]
internal = "daytime"

[[service]]
name = "metrics"
port = $P_METRICS
bind = ["127.0.0.1"]
internal = "metrics"

[[service]]
name = "denied"
port = $P_DENIED
bind = ["127.0.0.1"]
command = ["/bin/cat"]
deny = ["127.0.0.2"]

[[service]]
name = "rated"
port = $P_RATED
bind = ["127.0.0.1"]
command = ["/bin/cat"]
rate = "2/s"
END
sed 's/@GEN@/0/' "$WORK/soak.toml.in" >"$WORK/soak.toml"
chmod 644 "$WORK/soak.toml"
"$BIN" --check --cfgfile "$WORK/soak.toml" >"$OUT/check.txt" 2>&1 || {
    cat "$OUT/check.txt" >&2
    exit 1
}

nice -n 10 prlimit --nofile="$(ulimit -Hn)" "$BIN" --debug --cfgfile "$WORK/soak.toml" 2>"$OUT/daemon.log" &
DAEMON=$!
for _ in $(seq 100); do
    grep -q serving "$OUT/daemon.log" && break
    sleep 0.1
done
grep -q serving "$OUT/daemon.log" || { echo "the daemon did not start: $OUT/daemon.log" >&2; exit 1; }

echo "soak: $MINUTES min at $RATE exchanges/s, daemon pid $DAEMON ($("$BIN" --version | head -1)), results in $OUT"
STARTED=$(date -u '+%F %H:%M')
PORTS="direct=$P_DIRECT,pipe=$P_PIPE,tls=$P_TLS,proxy=$P_PROXY,udp_echo=$P_UDP,internal_echo=$P_ECHO"
PORTS+=",daytime=$P_DAYTIME,metrics=$P_METRICS,denied=$P_DENIED,rated=$P_RATED"
nice -n 10 python3 "$REPO/bench/soak-traffic.py" --pid "$DAEMON" --ports "$PORTS" \
    --ca "$WORK/ca.pem" --template "$WORK/soak.toml.in" --config "$WORK/soak.toml" \
    --minutes "$MINUTES" --rate "$RATE" --csv "$OUT/samples.csv" \
    --failures "$OUT/failures.txt" --counts "$OUT/counts.csv"
kill -0 "$DAEMON" 2>/dev/null || { echo "FAIL: the daemon died" >&2; exit 1; }
cp "$WORK/soak.toml" "$OUT/soak.toml"

echo "started $STARTED UTC, ended $(date -u '+%F %H:%M') UTC; per kind (ok, refused, failed):"
column -t -s, "$OUT/counts.csv" | sed 's/^/  /'
[[ -s $OUT/failures.txt ]] && { echo "failures (first 20):"; head -20 "$OUT/failures.txt"; }
python3 "$REPO/bench/soak-report.py" "$OUT/samples.csv" --svg "$SVG" \
    --title "wininetd soak: $MINUTES min, $RATE exchanges/s, reload every 30 s ($STARTED UTC)" |
    tee "$OUT/verdict.txt"
exit "${PIPESTATUS[0]}"
