#!/usr/bin/env bash
# Tests the Debian package on this machine (root; scripts/test.sh runs it):
# builds it, checks what dpkg-deb lists and what lintian says, installs it,
# checks the installed config, man pages and completions, upgrades it to a
# package of a higher version under socket activation with a client loop
# that must lose no connection, and purges it. Loopback only; stops only the
# processes it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }
say() { echo "deb-test: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (it installs and purges the package)"
for tool in dpkg-deb lintian man systemd-socket-activate rsync; do
    command -v "$tool" >/dev/null ||
        fail "$tool is missing (packages: dpkg, lintian, man-db, systemd, rsync)"
done
if dpkg-query -W -f='${Status}' wininetd 2>/dev/null | grep -q "ok installed"; then
    fail "a wininetd package is installed already; this test would purge it"
fi

version=$(cargo pkgid -p wininetd | sed 's/.*[#@]//')
# The upgrade's newer package first: this tree with a higher version (so its
# binary's --version says so too), built in a copy that shares target/ (only
# wininetd itself is compiled again; the copy stays in target/ so that the
# next run compiles nothing it need not). The package under test is built
# last, so target/release holds this tree's binary afterwards.
newer="${version}+upgradetest"
copy="$PWD/target/deb-upgrade-src"
mkdir -p "$copy"
rsync -a --delete --exclude /target --exclude /.git ./ "$copy/"
sed -i "0,/^version = \"$version\"\$/s//version = \"$newer\"/" "$copy/Cargo.toml"
grep -q "^version = \"$newer\"$" "$copy/Cargo.toml" || fail "cannot raise the version in the copy"
newer_deb=$(cd "$copy" && WININETD_COMMIT=$(git -C "$OLDPWD" rev-parse --short=12 HEAD) \
    SOURCE_DATE_EPOCH=$(git -C "$OLDPWD" log -1 --format=%ct) \
    CARGO_TARGET_DIR="$OLDPWD/target" scripts/deb.sh)
newer_deb="$copy/$newer_deb" # deb.sh prints it relative to the copy
[ -f "$newer_deb" ] || fail "the newer package was not built (got: $newer_deb)"
say "built $newer_deb (for the upgrade)"

deb=$(scripts/deb.sh)
[ -f "$deb" ] || fail "scripts/deb.sh did not print the .deb's path (got: $deb)"
say "built $deb"
# With a Debian revision (issue 14 names it without one, but lintian then
# warns wrong-name-for-changelog-of-native-package).
case "$(basename "$deb")" in
    "wininetd_${version}-1_"*.deb) ;;
    *) fail "$deb is not named wininetd_${version}-1_ARCH.deb" ;;
esac
dpkg --compare-versions "$(dpkg-deb -f "$newer_deb" Version)" gt "$(dpkg-deb -f "$deb" Version)" ||
    fail "$newer_deb is not a higher version than $deb"

# ---- what the package says and holds
info=$(dpkg-deb --info "$deb")
for want in "Package: wininetd" "Version: ${version}-1" "Section: net" "Depends: " \
    "Maintainer: "; do
    grep -q "^ $want" <<<"$info" || fail "dpkg-deb --info has no '$want':"$'\n'"$info"
done
grep -qx " */etc/wininetd.toml" <(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles) ||
    fail "/etc/wininetd.toml is not a conffile"
contents=$(dpkg-deb --contents "$deb" | awk '{print $NF}')
for path in ./usr/sbin/wininetd ./etc/wininetd.toml \
    ./usr/lib/systemd/system/wininetd.service \
    ./usr/lib/systemd/system/wininetd-echo.socket ./usr/lib/systemd/system/wininetd-daytime.socket \
    ./usr/share/man/man8/wininetd.8.gz ./usr/share/man/man5/wininetd.conf.5.gz \
    ./usr/share/bash-completion/completions/wininetd \
    ./usr/share/zsh/vendor-completions/_wininetd \
    ./usr/share/fish/vendor_completions.d/wininetd.fish \
    ./usr/share/doc/wininetd/copyright ./usr/share/doc/wininetd/README.md \
    ./usr/share/doc/wininetd/CHANGELOG.md ./usr/share/doc/wininetd/changelog.Debian.gz \
    ./usr/share/doc/wininetd/examples/wininetd.toml; do
    grep -qx -- "$path" <<<"$contents" || fail "the package lacks $path"
done
say "dpkg-deb --info and --contents list what is expected"

lintian --fail-on error "$deb" || fail "lintian reports errors"
say "lintian: no errors"

# ---- installed
trap 'dpkg --purge wininetd >/dev/null 2>&1 || true' EXIT
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >/dev/null
checked=$(/usr/sbin/wininetd --check --cfgfile /etc/wininetd.toml) || fail "--check failed"
echo "$checked"
# Every listener of the shipped config, as --check lists them: loopback only.
addrs=$(tail -n +2 <<<"$checked" | cut -f2 | cut -d' ' -f2 | tr ',' '\n')
[ -n "$addrs" ] || fail "--check listed no listener"
if grep -vE '^(127\.[0-9.]+|\[::1\]):[0-9]+$' <<<"$addrs"; then
    fail "the shipped config listens beyond loopback (above)"
fi
/usr/sbin/wininetd --version | grep -q "^wininetd $version (commit " ||
    fail "--version does not name the version and the commit"
for page in wininetd.8 wininetd.conf.5; do
    # man -l with groff's warnings on: nothing may come out on stderr.
    warnings=$(MANWIDTH=80 man --warnings -l "/usr/share/man/man${page##*.}/$page.gz" 2>&1 >/dev/null)
    [ -z "$warnings" ] || fail "man -l $page warns:"$'\n'"$warnings"
    man -l "/usr/share/man/man${page##*.}/$page.gz" 2>/dev/null | grep -q "wininetd" ||
        fail "man -l $page renders nothing"
done
bash -c '. /usr/share/bash-completion/completions/wininetd && complete -p wininetd' |
    grep -q wininetd || fail "the bash completion does not register"
say "installed: --check passes, man pages render without warnings, completion loads"

# ---- upgrade under socket activation: no connection refused.
# No systemd runs here (PID 1 is not systemd, so no `systemctl`, and the
# postinst's restart does nothing): systemd-socket-activate plays the
# socket units, holding the sockets of the packaged wininetd-*.socket
# units with their FileDescriptorName= as LISTEN_FDNAMES, and a shell plays
# the service manager: it runs /usr/sbin/wininetd (LISTEN_PID set to its
# own pid, as systemd does) and, once that exits, runs it again, as
# `systemctl restart` would. Between the two the newer package is installed
# and the first wininetd stopped, while a client loop keeps connecting.
# How long: about 10 s once both packages are built.
listen=()
names=()
for unit in /usr/lib/systemd/system/wininetd-*.socket; do
    name=$(sed -n 's/^FileDescriptorName=//p' "$unit")
    [ -n "$name" ] || fail "$unit has no FileDescriptorName="
    while IFS= read -r l; do listen+=("--listen=$l"); names+=("$name"); done \
        < <(sed -n 's/^ListenStream=//p' "$unit")
done
[ ${#listen[@]} -gt 0 ] || fail "the packaged socket units have no ListenStream"
[ -e /lib/systemd/system/wininetd.service ] || fail "/lib/systemd/system/wininetd.service is missing"
# The unit parses (systemd-analyze only warns on an unknown or bad key, so
# its warnings are what is checked) and turns the cpu controller on, so the
# programs share the service's scheduling group (README, "Unix notes").
unit_warnings=$(systemd-analyze verify /lib/systemd/system/wininetd.service 2>&1 |
    grep -E "Unknown|Failed to parse|Invalid|ignoring" || true)
[ -z "$unit_warnings" ] || fail "wininetd.service: $unit_warnings"
grep -qx 'CPUWeight=[0-9]*' /lib/systemd/system/wininetd.service ||
    fail "wininetd.service does not turn the cpu controller on (CPUWeight=)"
port=$(sed -n 's/^ListenStream=127\.0\.0\.1://p' /usr/lib/systemd/system/wininetd-echo.socket)
log=$(mktemp)
clients=$(mktemp)
run='sh -c "LISTEN_PID=\$\$ exec /usr/sbin/wininetd --debug --cfgfile /etc/wininetd.toml"'
systemd-socket-activate "${listen[@]}" --fdname="$(IFS=:; echo "${names[*]}")" \
    -- /bin/sh -c "$run; $run" >"$log" 2>&1 &
holder=$!
trap 'kill -9 $(cat /proc/$holder/task/$holder/children 2>/dev/null) $holder 2>/dev/null || true; dpkg --purge wininetd >/dev/null 2>&1 || true' EXIT
for _ in $(seq 100); do grep -q "Listening on" "$log" && break; sleep 0.1; done

echo_once() { # one connection to the echo service; must answer $1
    local reply
    exec 3<>"/dev/tcp/127.0.0.1/$port" || fail "connection $1 refused"
    printf '%s\n' "$1" >&3
    IFS= read -r -t 20 reply <&3 || fail "connection $1: no answer"
    exec 3>&-
    [ "$reply" = "$1" ] || fail "connection $1 answered '$reply'"
}
echo_once 0 # starts the first wininetd
for _ in $(seq 100); do grep -q "serving" "$log" && break; sleep 0.1; done
grep -q "listening on tcp 127.0.0.1:$port (a socket from the service manager)" "$log" ||
    fail "the echo socket was not taken from the manager:"$'\n'"$(cat "$log")"
read -r first _ <"/proc/$holder/task/$holder/children" || true
[ -n "$first" ] || fail "no first wininetd:"$'\n'"$(cat "$log")"
"/proc/$first/exe" --version | grep -q "^wininetd $version (commit " ||
    fail "the first wininetd is not $version"

# The client loop: until the restart is done, then 50 more (bounded: 120 s
# in all, and 20 s for each answer).
restarted=$(mktemp -u)
(
    i=1 after=0 until=$((SECONDS + 120))
    while [ $SECONDS -lt $until ] && [ $after -lt 50 ]; do
        echo_once "$i"
        [ -e "$restarted" ] && after=$((after + 1))
        i=$((i + 1))
    done
    echo "$((i - 1)) $after" >"$clients"
) &
loop=$!
sleep 1
DEBIAN_FRONTEND=noninteractive dpkg -i "$newer_deb" >/dev/null # the upgrade
kill -TERM "$first"                                             # its restart
for _ in $(seq 200); do [ "$(grep -c "serving" "$log")" -ge 2 ] && break; sleep 0.1; done
touch "$restarted"
wait "$loop" || fail "the client loop failed (above)"
rm -f "$restarted"
read -r made after <"$clients"
[ "$after" = 50 ] || fail "the client loop ended before the restart was over ($made connections)"
[ "$(grep -c "serving" "$log")" -ge 2 ] || fail "no second wininetd served:"$'\n'"$(cat "$log")"
read -r second _ <"/proc/$holder/task/$holder/children" || true
[ -n "$second" ] && [ "$second" != "$first" ] || fail "the restart did not happen"
[ "$(readlink "/proc/$second/exe")" = /usr/sbin/wininetd ] || fail "the second wininetd is not /usr/sbin/wininetd"
"/proc/$second/exe" --version | grep -q "^wininetd $newer (commit " ||
    fail "the running wininetd is not the newer one: $("/proc/$second/exe" --version)"
[ "$(dpkg-query -W -f='${Version}' wininetd)" = "$(dpkg-deb -f "$newer_deb" Version)" ] ||
    fail "the installed package is not the newer one"
kill -TERM "$second"
wait "$holder" || true
say "upgrade $version -> $newer under socket activation: $((made + 1)) connections, none refused"

# ---- purge
dpkg --purge wininetd >/dev/null
for gone in /usr/sbin/wininetd /etc/wininetd.toml /usr/lib/systemd/system/wininetd.service \
    /usr/lib/systemd/system/wininetd-echo.socket; do
    [ ! -e "$gone" ] || fail "$gone is still there after purge"
done
trap - EXIT
rm -f "$log" "$clients"
say "purged: nothing left"
