#!/usr/bin/env bash
# The project's one test command (README, .ci/run): installs what the tests
# need on a fresh Debian machine, then runs fmt, clippy and every test, on
# Linux and for Windows (cross-built, tested under Wine).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive: real third-party servers and clients
# (openbsd-inetd is unpacked below, as it conflicts with xinetd),
# systemd-socket-activate (systemd), promtool and a real scraper
# (prometheus), the .deb checks (lintian, man-db) and
# the Windows zip (zip, unzip).
packages=(rsync git tftpd-hpa tftp-hpa curl xinetd python3 netbase tcpd util-linux
          libbsd0 libevent-2.1-7 libtirpc3 libwrap0 prometheus
          haproxy nginx libnginx-mod-stream openssl gnutls-bin
          systemd lintian man-db zip unzip)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    # Packages that ship a daemon must not start it on this machine.
    policy=/usr/sbin/policy-rc.d
    had_policy=0; [ -e "$policy" ] && had_policy=1
    [ $had_policy = 1 ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [ $had_policy = 1 ] || rm -f "$policy"
fi

# openbsd-inetd (the reference for tests/migration.rs) conflicts with xinetd
# as a package: its .deb is unpacked, not installed (its libraries are above).
if [ ! -x /opt/openbsd-inetd/usr/sbin/inetd ]; then
    echo "== unpacking openbsd-inetd into /opt/openbsd-inetd"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download openbsd-inetd)
    dpkg-deb -x "$tmp"/openbsd-inetd_*.deb /opt/openbsd-inetd
    rm -rf "$tmp"
fi
# Each test run's output, for the count of tests not run (at the end).
# Into a file, then shown: not through a pipe, which Wine's services
# (services.exe and friends, started by the first `wine` call) inherit and
# keep open, so a reader like tee would never see its end.
logs=target/test-logs
mkdir -p "$logs"
logged() { # NAME COMMAND...: run COMMAND, its output to $logs/NAME.txt, then shown
    local name=$1 rc=0
    shift
    "$@" >"$logs/$name.txt" 2>&1 || rc=$?
    cat "$logs/$name.txt"
    return $rc
}

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (Linux)"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test (Linux)"
logged linux cargo test --workspace --all-targets
echo "== fuzz smoke: every parser target 30 s on its corpus (scripts/fuzz-smoke.sh)"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
scripts/fuzz-smoke.sh 30
echo "== bench smoke (wininetd alone, small)"
bench/run.sh --smoke
echo "== Debian package: build, lintian, install, upgrade, purge (scripts/deb-test.sh)"
# cargo-deb builds it; installed here from crates.io when missing (a debug
# build: it packs files, and builds in a third of the time).
command -v cargo-deb >/dev/null || cargo install --locked --debug cargo-deb
scripts/deb-test.sh

# Windows (x86_64-pc-windows-gnu), cross-built here and run under Wine.
echo "== Windows toolchain and Wine prefix (scripts/windows-env.sh)"
. scripts/windows-env.sh
# One wineserver for the whole Windows part: the SCM test needs it to stay
# up (Wine ends services otherwise), and every `wine` start is quicker.
# Ended (for this checkout's prefix only) however the script exits.
wineserver -p
trap 'wineserver -k 2>/dev/null || true' EXIT
# Wine's own services start now, with no pipe of ours as their output.
wine wineboot </dev/null >/dev/null 2>&1 || true
echo "== cargo clippy (Windows)"
scripts/windows-cargo.sh clippy --all-targets -- -D warnings
echo "== cargo test (Windows, under Wine)"
logged windows scripts/windows-cargo.sh test --all-targets
echo "== build wininetd.exe and the test programs"
scripts/windows-cargo.sh build --bins --examples
echo "== the Windows zip (scripts/windows-zip.sh, release build)"
zip=$(scripts/windows-zip.sh)
echo "== Wine integration tests (tests/wine.rs)"
WININETD_WINE_EXE="$WININETD_WIN_TARGET_DIR/$WININETD_WIN_TARGET/debug/wininetd.exe" \
    WININETD_WINE_ZIP="$zip" \
    logged wine cargo test --test wine -- --ignored

# Tests never skip themselves (they fail, naming what is missing); the only
# ones not run above are #[ignore]d, and each must have run in the Wine step.
echo "== tests not run"
ignored=$(grep -h -- ' \.\.\. ignored' "$logs/linux.txt" "$logs/windows.txt" || true)
if [ -z "$ignored" ]; then
    echo "none"
else
    echo "$ignored" | sed -E 's/^test .* \.\.\. ignored(, )?//; s/^$/(no reason given)/' |
        sort | uniq -c | sed 's/^/ignored: /'
    missed=0
    while read -r name; do
        if ! grep -q -- "^test $name \.\.\. ok\$" "$logs/wine.txt"; then
            echo "ignored and not run by the Wine step: $name"
            missed=1
        fi
    done < <(echo "$ignored" | sed -E 's/^test (.*) \.\.\. ignored.*/\1/')
    [ $missed = 0 ] || exit 1
    echo "all $(echo "$ignored" | wc -l) ignored tests ran (and passed) in the Wine step"
fi
