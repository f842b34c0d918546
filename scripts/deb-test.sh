#!/usr/bin/env bash
# Tests the Debian package on this machine (root; scripts/test.sh runs it):
# builds it, checks what dpkg-deb lists and what lintian says, installs it,
# checks the installed config, man pages and completions, upgrades it under
# socket activation with a client loop that must lose no connection, and
# purges it. Loopback only; stops only the processes it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }
say() { echo "deb-test: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (it installs and purges the package)"
for tool in dpkg-deb lintian man systemd-socket-activate; do
    command -v "$tool" >/dev/null ||
        fail "$tool is missing (packages: dpkg, lintian, man-db, systemd)"
done
if dpkg-query -W -f='${Status}' wininetd 2>/dev/null | grep -q "ok installed"; then
    fail "a wininetd package is installed already; this test would purge it"
fi

deb=$(scripts/deb.sh)
[ -f "$deb" ] || fail "scripts/deb.sh did not print the .deb's path (got: $deb)"
version=$(cargo pkgid -p wininetd | sed 's/.*[#@]//')
say "built $deb"
case "$(basename "$deb")" in
    "wininetd_${version}-1_"*.deb) ;;
    *) fail "$deb is not named wininetd_${version}-1_ARCH.deb" ;;
esac

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
    ./usr/lib/systemd/system/wininetd.service ./usr/lib/systemd/system/wininetd.socket \
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
# systemd-socket-activate holds the packaged wininetd.socket's sockets; a
# shell runs /usr/sbin/wininetd twice (LISTEN_PID set to its own pid, as
# systemd does); between the two runs the package is installed again, as
# an upgrade does before its postinst restarts the service.
listen=()
while IFS= read -r l; do listen+=("--listen=$l"); done \
    < <(sed -n 's/^ListenStream=//p' /usr/lib/systemd/system/wininetd.socket)
[ ${#listen[@]} -gt 0 ] || fail "the packaged wininetd.socket has no ListenStream"
port=$(sed -n 's/^ListenStream=127\.0\.0\.1://p' /usr/lib/systemd/system/wininetd.socket | head -n 1)
log=$(mktemp)
run='sh -c "LISTEN_PID=\$\$ exec /usr/sbin/wininetd --debug --cfgfile /etc/wininetd.toml"'
systemd-socket-activate "${listen[@]}" -- /bin/sh -c "$run; $run" >"$log" 2>&1 &
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
first=$(cat "/proc/$holder/task/$holder/children")
for i in $(seq 1 50); do echo_once "$i"; done
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >/dev/null # the upgrade
kill -TERM "$first"                                       # its restart
for i in $(seq 51 200); do echo_once "$i"; done
[ "$(grep -c "serving" "$log")" -ge 2 ] || fail "no second wininetd served:"$'\n'"$(cat "$log")"
second=$(cat "/proc/$holder/task/$holder/children")
[ -n "$second" ] && [ "$second" != "$first" ] || fail "the restart did not happen"
kill -TERM "$second"
wait "$holder" || true
say "upgrade under socket activation: 201 connections, none refused"

# ---- purge
dpkg --purge wininetd >/dev/null
for gone in /usr/sbin/wininetd /etc/wininetd.toml /usr/lib/systemd/system/wininetd.service; do
    [ ! -e "$gone" ] || fail "$gone is still there after purge"
done
trap - EXIT
rm -f "$log"
say "purged: nothing left"
