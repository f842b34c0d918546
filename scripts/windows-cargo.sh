#!/usr/bin/env bash
# Cargo for the Windows target (x86_64-pc-windows-gnu), from Linux:
#
#   scripts/windows-cargo.sh build
#   scripts/windows-cargo.sh test              (test binaries run under Wine)
#   scripts/windows-cargo.sh clippy --all-targets -- -D warnings
#   scripts/windows-cargo.sh run -- ARGS        (runs the exe under Wine)
#
# Uses Debian's Rust (rustc-web), not rustup's: rustup can't fetch the
# Windows std here, so std is built from Debian's rust-web-src with
# -Zbuild-std. Artifacts go to target/windows/x86_64-pc-windows-gnu/.
#
# Tests that start a service through Wine's SCM need a persistent wineserver
# for $WINEPREFIX (`wineserver -p`, then `wineserver -k`): otherwise Wine
# kills services.exe and the service a second or two after `sc start` exits.
set -euo pipefail

# Only report what setup changes; it runs on every call.
: "${WININETD_WIN_QUIET:=1}"
export WININETD_WIN_QUIET
. "$(dirname "${BASH_SOURCE[0]}")/windows-env.sh"

# By full path: rustup's proxies come first on PATH, and Debian's cargo
# with rustup's rustc fails (no std source where that rustc looks).
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
# Lets the stable Debian cargo/rustc accept -Zbuild-std (and what std's
# own build needs).
export RUSTC_BOOTSTRAP=1
export CARGO=/usr/bin/cargo
export CARGO_TARGET_DIR="$WININETD_WIN_TARGET_DIR"
# As config (not flags) so that every subcommand gets them, whatever the
# position of its arguments.
export CARGO_BUILD_TARGET="$WININETD_WIN_TARGET"
export CARGO_UNSTABLE_BUILD_STD=std,panic_abort
# `cargo test` / `cargo run` start the .exe under Wine, in our prefix
# (WINEPREFIX, WINEDEBUG=-all come from windows-env.sh).
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine

cd "$WININETD_ROOT"
if [ "${1:-}" = clippy ]; then
    # cargo looks up subcommands in ~/.cargo/bin before PATH, which would
    # give rustup's clippy (another rustc version than the std we build).
    # Debian's rust-web-clippy matches rustc-web exactly; it runs $CARGO.
    shift
    exec /usr/bin/cargo-clippy clippy "$@"
fi
exec /usr/bin/cargo "$@"
