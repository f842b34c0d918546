#!/usr/bin/env bash
# bench/run.sh — wininetd against xinetd, openbsd-inetd and tcpserver, side
# by side, in one run. See bench/README.md.
#
#   bench/run.sh                 full run (installs the peers from Debian; root)
#   bench/run.sh --smoke         ~200 connections against wininetd alone; no
#                                installs, no peers; exits non-zero on any failure
#   bench/run.sh --help          options
#
# All traffic goes to 127.0.0.1. Only the processes this script starts are
# stopped, by PID. Every loop is bounded (rounds x servers), and every
# loadgen run has its own wall-time limit.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

ROUNDS=5
CONNS=5000
CONC=16
PAYLOAD=64
STREAM_BYTES=$((1 << 30))
HOLD_N=1000
SPAWNS=5000
SERVERS="wininetd xinetd openbsd-inetd tcpserver"
SMOKE=0
INSTALL=1
REQUIRE_WININETD=0
PROFILE=release
OBSERVABILITY=1
OUT=""
KEEP=0

usage() {
    cat <<'EOF'
usage: bench/run.sh [options]
  --smoke               quick check of wininetd alone (200 conns, 8 MiB stream,
                        20 held, 1 round, dev build, no installs); non-zero exit
                        on any failure or if wininetd does not come up
  --rounds N            interleaved rounds (default 5)
  --connections N       connections in the rate scenario (default 5000)
  --concurrency C       connections in flight (default 16)
  --stream-bytes B      bytes through the stream scenario (default 1 GiB)
  --hold N              connections held in the idle scenario (default 1000)
  --spawns N            spawns in the spawn-ceiling scenario (default 5000)
  --servers "A B ..."   subset of: wininetd xinetd openbsd-inetd tcpserver
  --no-install          do not apt-get anything (peers must be present)
  --require-wininetd    fail instead of skipping when wininetd does not come up
  --release | --dev     cargo profile for wininetd and loadgen (default release;
                        --smoke defaults to dev)
  --out DIR             where results go (default bench/results/<timestamp>)
  --keep                keep the temporary directory (configs, logs)
  --no-observability    skip the logging/metrics cost run (bench/observability.sh,
                        run after the peers in a full run, into observability.md)
environment: WININETD_BIN overrides the wininetd binary to run;
             WININETD_LOG is wininetd's log level (default here: warn, so no
             line per connection, like the peers as configured);
             WININETD_BENCH_CACHE is where openbsd-inetd is unpacked
             (default /var/cache/wininetd-bench).
EOF
}

die() { echo "run.sh: $*" >&2; exit 1; }
note() { echo "run.sh: $*" >&2; }

num() {
    if ! [[ $2 =~ ^[1-9][0-9]{0,11}$ ]]; then die "$1 needs a positive integer, not '$2'"; fi
}

PROFILE_SET=0
while (($#)); do
    case $1 in
    --smoke) SMOKE=1 ;;
    --rounds) num "$1" "${2-}"; ROUNDS=$2; shift ;;
    --connections) num "$1" "${2-}"; CONNS=$2; shift ;;
    --concurrency) num "$1" "${2-}"; CONC=$2; shift ;;
    --stream-bytes) num "$1" "${2-}"; STREAM_BYTES=$2; shift ;;
    --hold) num "$1" "${2-}"; HOLD_N=$2; shift ;;
    --spawns) num "$1" "${2-}"; SPAWNS=$2; shift ;;
    --servers) SERVERS=${2-}; shift ;;
    --no-install) INSTALL=0 ;;
    --require-wininetd) REQUIRE_WININETD=1 ;;
    --release) PROFILE=release; PROFILE_SET=1 ;;
    --dev) PROFILE=dev; PROFILE_SET=1 ;;
    --out) OUT=${2-}; [[ -n $OUT ]] || die "--out needs a directory"; shift ;;
    --keep) KEEP=1 ;;
    --no-observability) OBSERVABILITY=0 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

if ((SMOKE)); then
    ROUNDS=1 CONNS=200 STREAM_BYTES=$((8 << 20)) HOLD_N=20 SPAWNS=200
    SERVERS="wininetd" INSTALL=0 REQUIRE_WININETD=1
    ((PROFILE_SET)) || PROFILE=dev
fi
for s in $SERVERS; do
    case $s in wininetd | xinetd | openbsd-inetd | tcpserver) ;; *) die "unknown server: $s" ;; esac
done
[[ -n $SERVERS ]] || die "--servers is empty"

STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${OUT:-$REPO/bench/results/$STAMP}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
WORK=$(mktemp -d /tmp/wininetd-bench.XXXXXX)
CACHE=${WININETD_BENCH_CACHE:-/var/cache/wininetd-bench}
# No per-connection log lines, as for the peers (xinetd's are switched off);
# set WININETD_LOG=info to measure with them.
WININETD_LOG_LEVEL=${WININETD_LOG:-warn}

# ---------------------------------------------------------------- processes
declare -A SPID=() # server name -> PID this script started
STARTED=()         # every PID this script started, for cleanup
FAILED=0

stop_pid() { # stop one PID we started: TERM, up to 5 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        note "PID $pid ignored SIGTERM for 5 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

POLICY_BACKUP=""
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    cgroup_cleanup
    restore_policy
    if ((KEEP)); then
        note "kept $WORK"
    else
        { mkdir -p "$OUT/work" && cp -r "$WORK"/. "$OUT/work/"; } 2>/dev/null || true
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- install
APT_UPDATED=0
apt_update_once() {
    ((APT_UPDATED)) && return 0
    note "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
}

# Keep package scripts from starting a system xinetd: a policy-rc.d that
# denies every start, in place only while we install.
deny_service_starts() {
    local p=/usr/sbin/policy-rc.d
    if [[ -e $p ]]; then
        POLICY_BACKUP=$WORK/policy-rc.d.orig
        cp -p "$p" "$POLICY_BACKUP"
    else
        POLICY_BACKUP=none
    fi
    printf '#!/bin/sh\n# wininetd bench: no service starts during install\nexit 101\n' >"$p"
    chmod 755 "$p"
}
restore_policy() {
    local p=/usr/sbin/policy-rc.d
    case $POLICY_BACKUP in
    "") ;;
    none) rm -f "$p" ;;
    *) cp -p "$POLICY_BACKUP" "$p" ;;
    esac
    POLICY_BACKUP=""
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

INETD=$CACHE/openbsd-inetd/usr/sbin/inetd
install_peers() {
    local need=() p
    # xinetd and ucspi-tcp as packages; openbsd-inetd conflicts with xinetd,
    # so only its libraries are installed and the binary is unpacked below.
    for p in xinetd ucspi-tcp libwrap0 libevent-2.1-7 libbsd0 libtirpc3 libsystemd0 stunnel4 openssl; do
        installed "$p" || need+=("$p")
    done
    if ((${#need[@]})); then
        [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need[*]}"
        apt_update_once
        deny_service_starts
        note "apt-get install ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1 ||
            { cat "$WORK/apt.log" >&2; die "apt-get install failed"; }
        restore_policy
    fi
    if [[ ! -x $INETD ]]; then
        local dl=$WORK/deb
        mkdir -p "$dl" "$CACHE"
        chmod 777 "$dl" # apt's _apt user downloads into it
        (cd "$dl" && apt-get download -qq openbsd-inetd 2>"$WORK/download.log") || {
            apt_update_once
            (cd "$dl" && apt-get download -qq openbsd-inetd 2>"$WORK/download.log")
        } || { cat "$WORK/download.log" >&2; die "apt-get download openbsd-inetd failed"; }
        rm -rf "$CACHE/openbsd-inetd"
        dpkg -x "$dl"/openbsd-inetd_*.deb "$CACHE/openbsd-inetd"
        basename "$dl"/openbsd-inetd_*.deb >"$CACHE/openbsd-inetd/VERSION"
    fi
    [[ -x $INETD ]] || die "no openbsd-inetd binary at $INETD"
    # A system xinetd would compete for the CPU; we never stop what we did not start.
    local c
    for c in /proc/[0-9]*/comm; do
        if [[ $(cat "$c" 2>/dev/null) == xinetd ]]; then
            c=${c#/proc/}
            note "warning: a system xinetd (PID ${c%/comm}) is running; not started by this script, left alone"
        fi
    done
}

has_server() { [[ " $SERVERS " == *" $1 "* ]]; }

peers_wanted() { has_server xinetd || has_server openbsd-inetd || has_server tcpserver; }

if peers_wanted; then
    if ((INSTALL)); then
        install_peers
    fi
    if has_server xinetd; then command -v xinetd >/dev/null || die "xinetd not installed (drop --no-install?)"; fi
    if has_server tcpserver; then command -v tcpserver >/dev/null || die "tcpserver not installed (drop --no-install?)"; fi
    if has_server openbsd-inetd; then [[ -x $INETD ]] || die "openbsd-inetd not unpacked at $INETD (drop --no-install?)"; fi
fi

# ---------------------------------------------------------------- build
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if [[ $PROFILE == release ]]; then BIN_DIR=$TARGET_DIR/release; else BIN_DIR=$TARGET_DIR/debug; fi
note "cargo build --profile $PROFILE -p loadgen"
(cd "$REPO" && cargo build -q --profile "$PROFILE" -p loadgen) || die "building loadgen failed"
LOADGEN=$BIN_DIR/loadgen
WININETD=${WININETD_BIN:-$BIN_DIR/wininetd}
if has_server wininetd && [[ -z ${WININETD_BIN-} ]]; then
    note "cargo build --profile $PROFILE -p wininetd"
    if ! (cd "$REPO" && cargo build -q --profile "$PROFILE" -p wininetd); then
        ((REQUIRE_WININETD)) && die "building wininetd failed"
        note "building wininetd failed: wininetd is skipped"
        SERVERS=${SERVERS//wininetd/}
    fi
fi

# ---------------------------------------------------------------- servers
read -r -a PORTS <<<"$("$LOADGEN" free-ports -n 11)"
declare -A PORT=(
    [wininetd]=${PORTS[0]} [xinetd]=${PORTS[1]} [openbsd-inetd]=${PORTS[2]}
    [tcpserver]=${PORTS[3]} [wininetd-iecho]=${PORTS[4]} [wininetd-pipe]=${PORTS[5]}
    [wininetd-proxy]=${PORTS[6]} [wininetd-tls]=${PORTS[7]} [stunnel]=${PORTS[8]}
    [wininetd-user]=${PORTS[9]} [wininetd-plain]=${PORTS[10]}
)
# Scenario (i), the user-switching spawn path, needs root (a service as nobody).
USER_PATH=0
((EUID == 0)) && USER_PATH=1

# Each server runs in its own cpu cgroup, as a systemd unit does with the
# cpu controller on (the packaged wininetd.service sets CPUWeight= for it).
# Outside one, the kernel's autogroup scheduling gives each session its own
# group: wininetd's programs (each in its own session) would then compete
# with wininetd as many groups, a peer's (sharing its session) as one.
CGROUP_BASE=""
CGROUPS=()
cgroup_setup() {
    local v1=/sys/fs/cgroup/cpu v2=/sys/fs/cgroup
    if [[ -w $v1/cgroup.procs ]]; then
        CGROUP_BASE=$v1
    elif grep -qw cpu "$v2/cgroup.controllers" 2>/dev/null && [[ -w $v2/cgroup.procs ]] &&
        { grep -qw cpu "$v2/cgroup.subtree_control" || echo +cpu >"$v2/cgroup.subtree_control"; } 2>/dev/null; then
        CGROUP_BASE=$v2
    else
        note "no writable cpu cgroup: servers share the bench's; with autogroup on, p99 compares unlike schedulings"
    fi
}
cgroup_place() { # move PID $2 into a fresh cpu cgroup named for server $1
    [[ -n $CGROUP_BASE ]] || return 0
    local cg=$CGROUP_BASE/wininetd-bench-$$-$1
    if mkdir "$cg" 2>/dev/null && echo "$2" >"$cg/cgroup.procs" 2>/dev/null; then
        CGROUPS+=("$cg")
    else
        note "could not place $1 in $cg; it runs in the bench's cgroup"
        rmdir "$cg" 2>/dev/null || true
    fi
}
cgroup_cleanup() { # after every server stopped; their last children may take a moment
    local cg i
    for cg in "${CGROUPS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            rmdir "$cg" 2>/dev/null && break
            sleep 0.1
        done
        [[ -d $cg ]] && note "cgroup $cg still has processes; left in place"
    done
    CGROUPS=()
}

# Start "$@" in the background with output to $WORK/$name.log; record its
# PID and place it in its own cpu cgroup.
launch() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    SPID[$name]=$!
    STARTED+=("$!")
    cgroup_place "$name" "$!"
}

# Wait until the server listens on each given port; 0 if it does.
await_listen() {
    local name=$1 port
    shift
    for port in "$@"; do
        if ! "$LOADGEN" wait-listen --port "$port" --pid "${SPID[$name]}" --timeout-ms 10000; then
            note "$name did not come up on port $port; its log ($WORK/$name.log):"
            sed 's/^/    /' "$WORK/$name.log" | tail -20 >&2
            return 1
        fi
    done
}

start_xinetd() {
    local p=${PORT[xinetd]}
    # Raised: cps (default 50 10 would disable the service for 10 s),
    # instances and per_source (unlimited). No per-connection logging.
    cat >"$WORK/xinetd.conf" <<EOF
defaults
{
    instances      = UNLIMITED
    per_source     = UNLIMITED
    cps            = 1000000 1
    log_type       = FILE $WORK/xinetd.service.log
    log_on_success =
    log_on_failure =
}
service wininetd-bench-cat
{
    type        = UNLISTED
    port        = $p
    bind        = 127.0.0.1
    socket_type = stream
    protocol    = tcp
    wait        = no
    user        = root
    server      = /bin/cat
    instances   = UNLIMITED
    per_source  = UNLIMITED
    cps         = 1000000 1
}
EOF
    launch xinetd xinetd -dontfork -f "$WORK/xinetd.conf" -pidfile "$WORK/xinetd.pid"
    await_listen xinetd "$p"
}

start_openbsd_inetd() {
    local p=${PORT[openbsd-inetd]}
    # Raised: nowait.N per service and -R (both default to 256 a minute, then
    # the service is off for ten minutes). -i: stay in the foreground.
    echo "127.0.0.1:$p stream tcp4 nowait.1000000 root /bin/cat cat" >"$WORK/inetd.conf"
    launch openbsd-inetd "$INETD" -i -R 1000000 "$WORK/inetd.conf"
    await_listen openbsd-inetd "$p"
}

start_tcpserver() {
    local p=${PORT[tcpserver]}
    # Raised: -c (default 40 concurrent) and -b (default backlog 20).
    # -R -H -l 0: no ident or DNS lookups per connection.
    launch tcpserver tcpserver -R -H -l 0 -c 100000 -b 128 127.0.0.1 "$p" /bin/cat
    await_listen tcpserver "$p"
}

start_wininetd() {
    local p=${PORT[wininetd]}
    [[ -x $WININETD ]] || { note "no wininetd binary at $WININETD"; return 1; }
    # Classic line: port, no options, program. It listens on 0.0.0.0; we connect to 127.0.0.1.
    echo "$p none /bin/cat" >"$WORK/wininetd.conf"
    launch wininetd env WININETD_LOG="$WININETD_LOG_LEVEL" "$WININETD" --debug --cfgfile "$WORK/wininetd.conf"
    await_listen wininetd "$p"
}

# Scenarios (f), (g) and (i): internal echo, pipe handoff, /bin/cat behind
# a PROXY v2 header and (as root) /bin/cat as nobody, from the extended
# (.toml) config; only when `wininetd --check` accepts it.
start_wininetd_ext() {
    cat >"$WORK/wininetd-ext.toml" <<EOF
[[service]]
name = "iecho"
port = ${PORT[wininetd-iecho]}
bind = ["127.0.0.1"]
internal = "echo"

[[service]]
name = "pipecat"
port = ${PORT[wininetd-pipe]}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
handoff = "pipe"

[[service]]
name = "proxycat"
port = ${PORT[wininetd-proxy]}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
proxy_protocol = "v2"
proxy_from = ["127.0.0.1"]

[[service]]
name = "plaincat"
port = ${PORT[wininetd-plain]}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
EOF
    if ((USER_PATH)); then
        cat >>"$WORK/wininetd-ext.toml" <<EOF

[[service]]
name = "usercat"
port = ${PORT[wininetd-user]}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
user = "nobody"
EOF
    fi
    if ! timeout 10 "$WININETD" --check --cfgfile "$WORK/wininetd-ext.toml" >"$WORK/wininetd-check.log" 2>&1; then
        note "scenario (f) skipped: 'wininetd --check' does not accept the internal-echo / pipe-handoff config yet:"
        sed 's/^/    /' "$WORK/wininetd-check.log" | tail -5 >&2
        return 1
    fi
    launch wininetd-ext env WININETD_LOG="$WININETD_LOG_LEVEL" "$WININETD" --debug --cfgfile "$WORK/wininetd-ext.toml"
    local ports=("${PORT[wininetd-iecho]}" "${PORT[wininetd-pipe]}" "${PORT[wininetd-proxy]}" "${PORT[wininetd-plain]}")
    ((USER_PATH)) && ports+=("${PORT[wininetd-user]}")
    await_listen wininetd-ext "${ports[@]}"
}

# Scenario (h): TLS. One ECDSA P-256 certificate (made here, for
# localhost, by a throwaway CA) for wininetd's TLS service and for stunnel
# (`exec = /bin/cat`, the usual TLS wrapper of a stdio program); loadgen
# speaks TLS 1.3 with a full handshake per connection.
TLS_DIR=$WORK/tls
make_tls_cert() {
    command -v openssl >/dev/null || { note "scenario (h) skipped: no openssl"; return 1; }
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR" &&
            openssl ecparam -name prime256v1 -genkey -noout -out ca.key &&
            openssl req -x509 -new -key ca.key -subj "/CN=bench CA" -days 2 \
                -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -out ca.pem &&
            openssl ecparam -name prime256v1 -genkey -noout -out leaf.key &&
            openssl req -new -key leaf.key -subj "/CN=localhost" -out leaf.csr &&
            printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >leaf.ext &&
            openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 2 \
                -extfile leaf.ext -out leaf.pem &&
            chmod 600 ca.key leaf.key
    ) >"$WORK/tls-cert.log" 2>&1 || { note "scenario (h) skipped: making the certificate failed"; return 1; }
}

start_wininetd_tls() {
    cat >"$WORK/wininetd-tls.toml" <<END
[[service]]
name = "tlscat"
port = ${PORT[wininetd-tls]}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
[service.tls]
cert = "$TLS_DIR/leaf.pem"
key = "$TLS_DIR/leaf.key"
END
    if ! timeout 10 "$WININETD" --check --cfgfile "$WORK/wininetd-tls.toml" >"$WORK/wininetd-tls-check.log" 2>&1; then
        note "scenario (h) skipped: 'wininetd --check' does not accept the TLS config:"
        sed 's/^/    /' "$WORK/wininetd-tls-check.log" | tail -5 >&2
        return 1
    fi
    launch wininetd-tls env WININETD_LOG="$WININETD_LOG_LEVEL" "$WININETD" --debug --cfgfile "$WORK/wininetd-tls.toml"
    await_listen wininetd-tls "${PORT[wininetd-tls]}"
}

start_stunnel() {
    command -v stunnel4 >/dev/null || { note "stunnel4 not installed: scenario (h) has no peer"; return 1; }
    cat >"$WORK/stunnel.conf" <<END
foreground = yes
pid =
debug = 3
[tlscat]
accept = 127.0.0.1:${PORT[stunnel]}
exec = /bin/cat
execArgs = cat
cert = $TLS_DIR/leaf.pem
key = $TLS_DIR/leaf.key
END
    launch stunnel stunnel4 "$WORK/stunnel.conf"
    await_listen stunnel "${PORT[stunnel]}"
}

cgroup_setup
ACTIVE=() # servers that came up, in the order given
for s in $SERVERS; do
    case $s in
    wininetd)
        if start_wininetd; then
            ACTIVE+=(wininetd)
            if start_wininetd_ext; then ACTIVE+=(wininetd-ext); fi
            if make_tls_cert && start_wininetd_tls; then
                ACTIVE+=(wininetd-tls)
                if ((!SMOKE)) && start_stunnel; then ACTIVE+=(stunnel); fi
            fi
        else
            ((REQUIRE_WININETD)) && die "wininetd did not come up"
            note "wininetd did not come up (not implemented yet?): the run goes on without it"
        fi
        ;;
    xinetd) start_xinetd || die "xinetd did not come up"; ACTIVE+=(xinetd) ;;
    openbsd-inetd) start_openbsd_inetd || die "openbsd-inetd did not come up"; ACTIVE+=(openbsd-inetd) ;;
    tcpserver) start_tcpserver || die "tcpserver did not come up"; ACTIVE+=(tcpserver) ;;
    esac
done
((${#ACTIVE[@]})) || die "no server came up"

# ---------------------------------------------------------------- scenarios
# One loadgen run; its JSON line goes to $RESULTS, its summary to stderr.
lg() {
    local rc=0
    "$LOADGEN" "$@" >>"$RESULTS" </dev/null || rc=$?
    if ((rc)); then
        FAILED=1
        note "FAILED (exit $rc): loadgen $*"
    fi
}

alive() {
    local name=$1
    if ! kill -0 "${SPID[$name]}" 2>/dev/null; then
        FAILED=1
        note "$name (PID ${SPID[$name]}) has died; its log:"
        sed 's/^/    /' "$WORK/$name.log" | tail -20 >&2
        return 1
    fi
}

run_server_round() { # name round
    local name=$1 r=$2 pid=${SPID[$1]} port=${PORT[$1]}
    local t=127.0.0.1:$port
    alive "$name" || return 0
    # hold first: in round 1 its growth is measured on a fresh process
    lg hold --target "$t" -n "$HOLD_N" --seconds 1 --ignore-stdin --warmup 16 \
        --server-pid "$pid" --server "$name" --round "$r"
    lg rate --target "$t" -n "$CONNS" -c "$CONC" --payload-size "$PAYLOAD" \
        --server-pid "$pid" --server "$name" --round "$r"
    lg stream --target "$t" --bytes "$STREAM_BYTES" --server-pid "$pid" --server "$name" --round "$r"
    alive "$name" || true
}

run_ext_round() { # round
    local r=$1 pid=${SPID[wininetd-ext]}
    alive wininetd-ext || return 0
    lg rate --target "127.0.0.1:${PORT[wininetd-iecho]}" -n "$CONNS" -c "$CONC" --payload-size "$PAYLOAD" \
        --server-pid "$pid" --server wininetd-iecho --round "$r"
    # The pipe figure is judged against direct mode, so direct is measured
    # right before it: the two transfers see the same machine weather.
    if has_server wininetd && alive wininetd; then
        lg stream --target "127.0.0.1:${PORT[wininetd]}" --bytes "$STREAM_BYTES" \
            --server-pid "${SPID[wininetd]}" --server wininetd-direct --round "$r"
    fi
    lg stream --target "127.0.0.1:${PORT[wininetd-pipe]}" --bytes "$STREAM_BYTES" \
        --server-pid "$pid" --server wininetd-pipe --round "$r"
    # (g) the same rate with a PROXY v2 header (loadgen writes it), judged
    # against the same daemon's /bin/cat service without one, measured right
    # before it: two daemons differ by their history (one that held a
    # thousand connections shares its descriptor table with each child) by
    # as much as the header costs. The two swap places every other round,
    # so neither always runs second (on the first's exiting children).
    local g
    for g in $(((r % 2) ? 0 : 1)) $(((r % 2) ? 1 : 0)); do
        if ((g == 0)); then
            lg rate --target "127.0.0.1:${PORT[wininetd-plain]}" -n "$CONNS" -c "$CONC" --payload-size "$PAYLOAD" \
                --server-pid "$pid" --server wininetd-noproxy --round "$r"
        else
            lg rate --target "127.0.0.1:${PORT[wininetd-proxy]}" -n "$CONNS" -c "$CONC" --payload-size "$PAYLOAD" \
                --proxy-v2 --server-pid "$pid" --server wininetd-proxy --round "$r"
        fi
    done
    # (i) the same rate scenario as (a), through a service run as nobody:
    # the spawn path without shared memory.
    if ((USER_PATH)); then
        lg rate --target "127.0.0.1:${PORT[wininetd-user]}" -n "$CONNS" -c "$CONC" --payload-size "$PAYLOAD" \
            --server-pid "$pid" --server wininetd-user --round "$r"
    fi
    alive wininetd-ext || true
}

run_tls_round() { # name round
    local name=$1 r=$2 pid=${SPID[$1]} t=127.0.0.1:${PORT[$1]}
    local ca=(--tls-ca "$TLS_DIR/ca.pem")
    alive "$name" || return 0
    lg hold --target "$t" -n "$HOLD_N" --seconds 1 --ignore-stdin --warmup 16 "${ca[@]}" \
        --server-pid "$pid" --server "$name" --round "$r"
    lg rate --target "$t" -n "$CONNS" -c "$CONC" --payload-size "$PAYLOAD" "${ca[@]}" \
        --server-pid "$pid" --server "$name" --round "$r"
    lg stream --target "$t" --bytes "$STREAM_BYTES" "${ca[@]}" --server-pid "$pid" --server "$name" --round "$r"
    alive "$name" || true
}

# VmRSS of each super-server as started, before any connection.
for s in "${ACTIVE[@]}"; do
    [[ $s == wininetd-ext || $s == wininetd-tls ]] && continue
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/${SPID[$s]}/status" 2>/dev/null || true)
    printf '{"mode":"start","scenario":"start","server":"%s","round":1,"server_pid":%s,"server_rss_kib":%s}\n' \
        "$s" "${SPID[$s]}" "${rss:-null}" >>"$RESULTS"
done

ORDER=(machine "${ACTIVE[@]}")
note "servers: ${ACTIVE[*]}; $ROUNDS rounds; rate $CONNS conns C=$CONC; stream $STREAM_BYTES B; hold $HOLD_N"
START_S=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order each round so no server always runs first or last.
    n=${#ORDER[@]}
    for ((i = 0; i < n; i++)); do
        item=${ORDER[$(((i + r - 1) % n))]}
        note "round $r/$ROUNDS: $item"
        case $item in
        machine)
            lg spawn-ceiling -n "$SPAWNS" -c "$CONC" --payload-size "$PAYLOAD" --round "$r"
            lg spawn-ceiling -n "$SPAWNS" -c "$CONC" --payload-size "$PAYLOAD" --event-loop \
                --scenario spawn-event-loop --round "$r"
            lg spawn-ceiling -n "$SPAWNS" -c "$CONC" --payload-size "$PAYLOAD" --fork \
                --scenario spawn-fork --round "$r"
            if [[ -f $TLS_DIR/leaf.pem ]]; then
                lg tls-handshake --cert "$TLS_DIR/leaf.pem" --key "$TLS_DIR/leaf.key" \
                    --ca "$TLS_DIR/ca.pem" -n "$SPAWNS" --server machine --round "$r"
            fi
            ;;
        wininetd-ext) run_ext_round "$r" ;;
        wininetd-tls | stunnel) run_tls_round "$item" "$r" ;;
        *) run_server_round "$item" "$r" ;;
        esac
        sleep 1 # let the children of the last scenario finish exiting
    done
done

# ---------------------------------------------------------------- report
peer_versions() {
    local v=()
    has_server xinetd && v+=("xinetd $(dpkg-query -W -f='${Version}' xinetd 2>/dev/null)")
    has_server openbsd-inetd && v+=("openbsd-inetd $(sed 's/^openbsd-inetd_//; s/_.*//' "$CACHE/openbsd-inetd/VERSION" 2>/dev/null)")
    has_server tcpserver && v+=("ucspi-tcp $(dpkg-query -W -f='${Version}' ucspi-tcp 2>/dev/null)")
    local IFS=";" joined
    joined="${v[*]}"
    if [[ -n $joined ]]; then echo "${joined//;/, }"; else echo none; fi
}
{
    echo "### wininetd bench, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr); load average $LOAD_START at the start," \
        "$(cut -d' ' -f1-3 /proc/loadavg) at the end (the bench's own load included)." \
        "Peers: $(peer_versions). wininetd: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), $PROFILE build."
    echo "Scenarios: rate $CONNS conns, C=$CONC, $PAYLOAD B echoed by /bin/cat; stream $STREAM_BYTES B through /bin/cat;" \
        "idle $HOLD_N held; spawn ceiling $SPAWNS spawns, $CONC outstanding. Took $((SECONDS - START_S)) s."
    if [[ -n $CGROUP_BASE ]]; then
        echo "Each server ran in its own cpu cgroup ($CGROUP_BASE), as under a systemd unit with the cpu controller on."
    else
        echo "Servers ran in the bench's cgroup (no writable cpu cgroup); autogroup $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo '?')."
    fi
    echo
    if ((SMOKE)) || [[ $PROFILE != release ]]; then
        # The targets are about a release build in a full run.
        echo "Targets are judged only in a full run of a release build; none are shown here."
        echo
        "$LOADGEN" report --input "$RESULTS" --no-targets
    else
        "$LOADGEN" report --input "$RESULTS"
    fi
} >"$OUT/table.md"
# The rate run with default logging next to the silent one, and with a
# scraped metrics service: what watching costs (release builds only).
if ((!SMOKE)) && ((OBSERVABILITY)) && [[ $PROFILE == release ]] && has_server wininetd; then
    note "observability: silent vs logged vs scraped, $ROUNDS rounds"
    if WININETD_BIN=$WININETD LOADGEN=$LOADGEN "$REPO/bench/observability.sh" \
        --rounds "$ROUNDS" --connections "$CONNS" >"$OUT/observability.md"; then
        { echo; echo "#### What watching costs (bench/observability.sh)"; echo; cat "$OUT/observability.md"; } >>"$OUT/table.md"
    else
        note "observability run FAILED"
        FAILED=1
    fi
fi
echo
cat "$OUT/table.md"
echo
note "raw results: $RESULTS; table: $OUT/table.md"
if ((FAILED)); then
    note "some runs FAILED (see above)"
    exit 1
fi
