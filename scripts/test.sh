#!/usr/bin/env bash
# The project's one test command (README, .ci/run): installs what the tests
# need on a fresh Debian machine, then runs fmt, clippy and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive: real third-party servers and clients.
packages=(rsync git tftpd-hpa tftp-hpa curl)
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
cargo clippy --all-targets -- -D warnings
echo "== cargo test (Linux)"
cargo test --all-targets
