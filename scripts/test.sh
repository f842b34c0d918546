#!/usr/bin/env bash
# The project's one test command (README, .ci/run): installs what the tests
# need on a fresh Debian machine, then runs fmt, clippy and every test, on
# Linux and for Windows (cross-built, tested under Wine).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive: real third-party servers and clients,
# systemd-socket-activate (systemd), the .deb checks (lintian, man-db) and
# the Windows zip (zip, unzip).
packages=(rsync git tftpd-hpa tftp-hpa curl systemd lintian man-db zip unzip)
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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (Linux)"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test (Linux)"
cargo test --workspace --all-targets
echo "== bench smoke (wininetd alone, small)"
bench/run.sh --smoke
echo "== Debian package: build, lintian, install, upgrade, purge (scripts/deb-test.sh)"
# cargo-deb builds it; installed here from crates.io when missing.
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
scripts/deb-test.sh

# Windows (x86_64-pc-windows-gnu), cross-built here and run under Wine.
echo "== Windows toolchain and Wine prefix (scripts/windows-env.sh)"
. scripts/windows-env.sh
# One wineserver for the whole Windows part: the SCM test needs it to stay
# up (Wine ends services otherwise), and every `wine` start is quicker.
# Ended (for this checkout's prefix only) however the script exits.
wineserver -p
trap 'wineserver -k 2>/dev/null || true' EXIT
echo "== cargo clippy (Windows)"
scripts/windows-cargo.sh clippy --all-targets -- -D warnings
echo "== cargo test (Windows, under Wine)"
scripts/windows-cargo.sh test --all-targets
echo "== build wininetd.exe and the test programs"
scripts/windows-cargo.sh build --bins --examples
echo "== the Windows zip (scripts/windows-zip.sh, release build)"
zip=$(scripts/windows-zip.sh)
echo "== Wine integration tests (tests/wine.rs)"
WININETD_WINE_EXE="$WININETD_WIN_TARGET_DIR/$WININETD_WIN_TARGET/debug/wininetd.exe" \
    WININETD_WINE_ZIP="$zip" \
    cargo test --test wine -- --ignored
