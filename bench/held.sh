#!/usr/bin/env bash
# bench/held.sh — N concurrent held sessions per handoff mode (direct, pipe,
# TLS), what each costs the daemon and the kernel, and whether it all goes
# back once they end. See bench/README.md, "Held sessions".
#
#   bench/held.sh                      10,000 sessions per mode (root)
#   bench/held.sh --sessions 500 --dev quicker
#
# All traffic is loopback (from 127.0.0.1 … 127.0.0.S to 127.0.0.1). Only
# the processes this script starts are stopped, by PID; every wait is
# bounded in time.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SESSIONS=10000
MODES="direct pipe tls"
SOURCES=8
PROFILE=release
OUT=""
TOLERANCE=5 # percent, for the release check
BUILD=1

usage() {
    cat <<'EOF'
usage: bench/held.sh [options]   (as root: raises RLIMIT_NOFILE, makes a memory cgroup)
  --sessions N     sessions held at once per mode (default 10000)
  --modes "..."    subset of: direct pipe tls (default all three)
  --sources S      client source addresses 127.0.0.1..S (default 8)
  --dev            debug build (default release)
  --no-build       use the binaries already built
  --out DIR        results (default bench/results/held-<timestamp>)
environment: WININETD_BIN runs another wininetd binary.
Exit 1 if a session was not served or something was not released.
EOF
}
die() { echo "held.sh: $*" >&2; exit 1; }
note() { echo "held.sh: $*" >&2; }
num() { [[ $2 =~ ^[1-9][0-9]{0,5}$ ]] || die "$1 needs a positive integer, not '$2'"; }

while (($#)); do
    case $1 in
    --sessions) num "$1" "${2-}"; SESSIONS=$2; shift ;;
    --modes) MODES=${2-}; shift ;;
    --sources) num "$1" "${2-}"; SOURCES=$2; shift ;;
    --dev) PROFILE=dev ;;
    --no-build) BUILD=0 ;;
    --out) OUT=${2-}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done
for m in $MODES; do case $m in direct | pipe | tls) ;; *) die "unknown mode: $m" ;; esac; done
((SESSIONS <= 50000)) || die "--sessions is at most 50000"
((SOURCES <= 250)) || die "--sources is at most 250"
[[ $(id -u) == 0 ]] || die "needs root: RLIMIT_NOFILE above the hard limit, a memory cgroup"
for t in prlimit openssl; do command -v $t >/dev/null || die "missing: $t"; done

OUT=${OUT:-$REPO/bench/results/held-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/wininetd-held.XXXXXX)
# Descriptors: the daemon holds 3 per session in pipe and TLS mode (the
# socket and two pipe ends), loadgen one. Raising the hard limit takes
# CAP_SYS_RESOURCE; where that is missing (a container) the pipe and TLS
# runs hold as many sessions as the hard limit allows, and say so.
NOFILE=$((SESSIONS * 3 + 1024))
declare -A WANT=([direct]=$SESSIONS [pipe]=$SESSIONS [tls]=$SESSIONS)
if ! prlimit --nofile=$NOFILE:$NOFILE -- true 2>/dev/null; then
    hard=$(ulimit -Hn)
    note "cannot raise RLIMIT_NOFILE to $NOFILE (no CAP_SYS_RESOURCE?): the hard limit $hard stays"
    NOFILE=$hard
    cap=$(((hard - 100) / 3))
    for m in pipe tls; do
        if ((WANT[$m] > cap)); then
            note "$m: $cap sessions, not $SESSIONS: 3 descriptors each in the daemon"
            WANT[$m]=$cap
        fi
    done
    ((SESSIONS < hard - 100)) || die "$SESSIONS sessions need more than $hard descriptors in loadgen"
fi

((BUILD == 0)) || (cd "$REPO" && nice -n 10 cargo build -q --profile "$PROFILE" -p wininetd -p loadgen) || die "build failed"
DIR=$([[ $PROFILE == dev ]] && echo debug || echo release)
WININETD=${WININETD_BIN:-$REPO/target/$DIR/wininetd}
LOADGEN=$REPO/target/$DIR/loadgen

DPID=""
LPID=""
CG=/sys/fs/cgroup/memory/wininetd-held-$$
stop_pid() {
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    exec 3>&- 2>/dev/null || true
    stop_pid "$LPID"
    stop_pid "$DPID"
    [[ -d $CG ]] && rmdir "$CG" 2>/dev/null || true
    cp -r "$WORK"/. "$OUT/work/" 2>/dev/null || mkdir -p "$OUT/work"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- the daemon
(
    cd "$WORK"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key &&
        openssl req -x509 -new -key ca.key -subj "/CN=held CA" -days 2 \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -out ca.pem &&
        openssl ecparam -name prime256v1 -genkey -noout -out leaf.key &&
        openssl req -new -key leaf.key -subj "/CN=localhost" -out leaf.csr &&
        printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >leaf.ext &&
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 2 \
            -extfile leaf.ext -out leaf.pem && chmod 600 ca.key leaf.key
) >"$WORK/cert.log" 2>&1 || die "making the certificate failed (see $WORK/cert.log)"

read -r -a PORTS <<<"$("$LOADGEN" free-ports -n 3)"
declare -A PORT=([direct]=${PORTS[0]} [pipe]=${PORTS[1]} [tls]=${PORTS[2]})
cat >"$WORK/held.toml" <<EOF
max_connections = $((SESSIONS * 3 + 64))

[[service]]
name = "direct"
port = ${PORT[direct]}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
handoff = "direct"

[[service]]
name = "pipe"
port = ${PORT[pipe]}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
handoff = "pipe"

[[service]]
name = "tls"
port = ${PORT[tls]}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
[service.tls]
cert = "$WORK/leaf.pem"
key = "$WORK/leaf.key"
EOF
"$WININETD" --check --cfgfile "$WORK/held.toml" >"$WORK/check.log" 2>&1 || { cat "$WORK/check.log" >&2; die "--check refused the config"; }
WININETD_LOG=warn WININETD_RUN_DIR=$WORK/run prlimit --nofile=$NOFILE:$NOFILE -- \
    "$WININETD" --debug --cfgfile "$WORK/held.toml" 2>"$WORK/wininetd.log" &
DPID=$!
for mode in direct pipe tls; do
    "$LOADGEN" wait-listen --pid "$DPID" --timeout-ms 10000 --port "${PORT[$mode]}" ||
        die "wininetd did not listen (see $WORK/wininetd.log)"
done
# Its own memory cgroup: its kernel memory and its children's, apart from
# the clients' and the rest of the machine's.
mkdir "$CG"
echo "$DPID" >"$CG/cgroup.procs"

# ---------------------------------------------------------------- readings
meminfo_kib() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
children() { wc -w <"/proc/$DPID/task/$DPID/children"; }
sample() { # prints: rss_kib fds pipe_fds children kernel_kib cg_kmem_kib cg_kib tcp_inuse tcp_mem_pages
    local rss fds pipes kern tcp
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$DPID/status")
    fds=$(find "/proc/$DPID/fd" -mindepth 1 -maxdepth 1 | wc -l)
    pipes=$(find "/proc/$DPID/fd" -mindepth 1 -maxdepth 1 -lname 'pipe:*' | wc -l)
    kern=$(($(meminfo_kib Slab) + $(meminfo_kib KernelStack) + $(meminfo_kib PageTables)))
    tcp=$(awk '$1 == "TCP:" { for (i = 2; i < NF; i++) { if ($i == "inuse") u = $(i + 1); if ($i == "mem") m = $(i + 1) } print u, m }' /proc/net/sockstat)
    echo "$rss $fds $pipes $(children) $kern $(($(cat "$CG/memory.kmem.usage_in_bytes") / 1024)) $(($(cat "$CG/memory.usage_in_bytes") / 1024)) $tcp"
}
wait_children() { # until the daemon has at most $1 children, up to $2 s
    local deadline=$((SECONDS + $2))
    while (($(children) > $1)); do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

hold() { # mode n seconds [extra loadgen args]: runs loadgen hold in the background
    local mode=$1 n=$2 secs=$3
    shift 3
    local tls=()
    [[ $mode == tls ]] && tls=(--tls-ca "$WORK/ca.pem" --tls-name localhost)
    prlimit --nofile=$NOFILE:$NOFILE -- nice -n 5 "$LOADGEN" hold --target "127.0.0.1:${PORT[$mode]}" \
        -n "$n" --sources "$SOURCES" --connect-concurrency 64 --seconds "$secs" \
        --conn-timeout 60 --max-seconds 900 --scenario "held-$mode" --server wininetd "${tls[@]}" "$@"
}

FAIL=0
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
TABLE=$OUT/table.md
{
    echo "| mode | sessions | served | daemon RSS/session | kernel/session (machine: Slab+KernelStack+PageTables) | cgroup kmem/session | release (RSS, fds, pipe fds, children; after vs before) |"
    echo "|---|---|---|---|---|---|---|"
} >"$TABLE"

for mode in $MODES; do
    N=${WANT[$mode]}
    # What is paid once (code paged in, the allocator's arenas, the path
    # that gives memory back after a crowd) is paid before "before".
    note "$mode: warm-up (300 sessions held at once, then closed)"
    hold "$mode" 300 0 --ignore-stdin >"$WORK/$mode-warmup.json" 2>"$WORK/$mode-warmup.log" || die "$mode: warm-up failed (see $WORK/$mode-warmup.log)"
    wait_children 0 60 || die "$mode: warm-up children not reaped in 60 s"
    sleep 2
    read -r b_rss b_fds b_pipes b_kids b_kern b_cgk b_cg b_tin b_tmem <<<"$(sample)"
    note "$mode: before: VmRSS $b_rss KiB, $b_fds fds ($b_pipes pipes), $b_kids children"

    rm -f "$WORK/ready" "$WORK/stdin"
    mkfifo "$WORK/stdin"
    t0=$SECONDS
    hold "$mode" "$N" 900 --ready-file "$WORK/ready" <"$WORK/stdin" >"$WORK/$mode.json" 2>"$WORK/$mode.log" &
    LPID=$!
    exec 3>"$WORK/stdin"
    deadline=$((SECONDS + 600))
    until [[ -s $WORK/ready ]]; do
        kill -0 "$LPID" 2>/dev/null || die "$mode: loadgen ended before holding (see $WORK/$mode.log)"
        ((SECONDS < deadline)) || die "$mode: not all open within 600 s"
        sleep 0.5
    done
    open_s=$((SECONDS - t0))
    served=$(cat "$WORK/ready")
    sleep 3
    read -r d_rss d_fds d_pipes d_kids d_kern d_cgk d_cg d_tin d_tmem <<<"$(sample)"
    note "$mode: $served held (in ${open_s} s): VmRSS $d_rss KiB, $d_fds fds ($d_pipes pipes), $d_kids children"

    exec 3>&-
    lrc=0
    wait "$LPID" || lrc=$?
    LPID=""
    cat "$WORK/$mode.json" >>"$RESULTS"
    t1=$SECONDS
    wait_children "$b_kids" 300 || { note "$mode: children not reaped within 300 s"; FAIL=1; }
    reap_s=$((SECONDS - t1))
    sleep 3
    read -r a_rss a_fds a_pipes a_kids a_kern a_cgk a_cg a_tin a_tmem <<<"$(sample)"
    # The last relays and spare spawn slots close a moment after their
    # programs are reaped: up to 10 s more for the descriptors to settle.
    for ((settle = 0; settle < 10 && (a_fds != b_fds || a_pipes != b_pipes); settle++)); do
        sleep 1
        read -r a_rss a_fds a_pipes a_kids a_kern a_cgk a_cg a_tin a_tmem <<<"$(sample)"
    done
    note "$mode: after (reaped in ${reap_s} s): VmRSS $a_rss KiB, $a_fds fds ($a_pipes pipes), $a_kids children"

    ((lrc == 0 && served == N && d_kids - b_kids == N)) || {
        note "$mode: loadgen exit $lrc, $served of $N served, $((d_kids - b_kids)) children"
        FAIL=1
    }
    within() { # before after: after within TOLERANCE % of before (at least 1 unit)
        local slack=$(($1 * TOLERANCE / 100))
        ((slack < 1)) && slack=1
        (($2 <= $1 + slack && $2 >= $1 - slack))
    }
    release=ok
    for pair in "rss $b_rss $a_rss" "fds $b_fds $a_fds" "pipes $b_pipes $a_pipes" "children $b_kids $a_kids"; do
        read -r what b a <<<"$pair"
        within "$b" "$a" || { release="NOT: $what $b -> $a"; FAIL=1; }
    done
    per() { awk -v a="$1" -v b="$2" -v n="$N" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }'; }
    echo "| $mode | $N | $served | $(per "$b_rss" "$d_rss") B | $(per "$b_kern" "$d_kern") B | $(per "$b_cgk" "$d_cgk") B | $release: $b_rss → $a_rss KiB, $b_fds → $a_fds fds, $b_pipes → $a_pipes pipes, $b_kids → $a_kids children |" >>"$TABLE"
    printf '{"mode":"held","scenario":"held-%s","sessions":%d,"served":%d,"open_s":%d,"reap_s":%d,' "$mode" "$N" "$served" "$open_s" "$reap_s" >>"$RESULTS"
    printf '"before":[%s],"during":[%s],"after":[%s],' "${b_rss},${b_fds},${b_pipes},${b_kids},${b_kern},${b_cgk},${b_cg},${b_tin},${b_tmem}" \
        "${d_rss},${d_fds},${d_pipes},${d_kids},${d_kern},${d_cgk},${d_cg},${d_tin},${d_tmem}" \
        "${a_rss},${a_fds},${a_pipes},${a_kids},${a_kern},${a_cgk},${a_cg},${a_tin},${a_tmem}" >>"$RESULTS"
    printf '"fields":"rss_kib fds pipe_fds children kernel_kib cg_kmem_kib cg_kib tcp_inuse tcp_mem_pages","release":"%s"}\n' "$release" >>"$RESULTS"
done

cat "$TABLE"
note "results in $OUT"
exit "$FAIL"
