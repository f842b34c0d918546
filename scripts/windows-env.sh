#!/usr/bin/env bash
# Set up (idempotently) what building, linting and testing the Windows target
# from Linux needs, and export the variables that the other scripts use.
#
#   scripts/windows-env.sh      set up, print what was done
#   . scripts/windows-env.sh    same, and export the variables into this shell
#
# Fast when already done: it only checks dpkg's status, file times and the
# prefix's files. Set WININETD_WIN_QUIET=1 to print only what it changes.
#
# The Wine prefix lives in the checkout (target/wine-prefix), not in $HOME:
# a prefix holds the registry (so the service registrations) and has one
# wineserver, so each checkout (worktree, CI clone) gets its own and test runs
# of different checkouts on one machine can't see or kill each other's
# services; `rm -rf target` removes it with everything else built.

_wininetd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

export WININETD_ROOT="$_wininetd_root"
export WININETD_WIN_TARGET=x86_64-pc-windows-gnu
# Apart from target/ so that Linux and Windows builds don't evict each other.
export WININETD_WIN_TARGET_DIR="$_wininetd_root/target/windows"
export WININETD_WIN_SHIM="$_wininetd_root/target/windows-shim/bcryptprimitives.dll"
export WINEPREFIX="$_wininetd_root/target/wine-prefix"
# Wine's own chatter otherwise mixes into test output.
export WINEDEBUG=-all
# No Mono/Gecko: their installers would want a download and a dialog.
export WINEDLLOVERRIDES="mscoree,mshtml="
unset _wininetd_root

_wininetd_win_setup() (
    set -euo pipefail
    say() { echo "windows-env: $*" >&2; }
    info() { [ "${WININETD_WIN_QUIET:-0}" = 1 ] || say "$@"; }

    # One setup at a time per checkout (parallel CI steps, two shells).
    mkdir -p "$WININETD_ROOT/target"
    exec 9>"$WININETD_ROOT/target/.windows-env.lock"
    flock -w 600 9

    # 1. Debian packages. rustc-web/cargo-web/rust-web-src: Debian's Rust with
    #    its std source, for -Zbuild-std (rustup can't fetch the Windows std
    #    here); rust-web-clippy: the clippy built with that very rustc (rustup's
    #    clippy can't read crates that Debian's rustc compiled); mingw gcc: the
    #    linker, and the compiler for the shim; wine, wine64: to run the exes.
    local pkgs=(rustc-web cargo-web rust-web-src rust-web-clippy gcc-mingw-w64-x86-64 wine wine64)
    local missing=() p
    for p in "${pkgs[@]}"; do
        if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
            missing+=("$p")
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # Other people's apt runs on a shared machine: wait for dpkg's lock.
        apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
        apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
        say "installed ${missing[*]}"
    else
        info "packages already installed"
    fi

    # 2. The ProcessPrng shim (see scripts/windows/processprng.c).
    local src="$WININETD_ROOT/scripts/windows/processprng.c"
    local def="$WININETD_ROOT/scripts/windows/processprng.def"
    if [ ! -f "$WININETD_WIN_SHIM" ] || [ "$src" -nt "$WININETD_WIN_SHIM" ] || [ "$def" -nt "$WININETD_WIN_SHIM" ]; then
        mkdir -p "$(dirname "$WININETD_WIN_SHIM")"
        x86_64-w64-mingw32-gcc -shared -O2 -s -Wall -Wextra -o "$WININETD_WIN_SHIM.tmp" \
            "$src" "$def" -ladvapi32
        mv "$WININETD_WIN_SHIM.tmp" "$WININETD_WIN_SHIM"
        say "built $WININETD_WIN_SHIM"
    else
        info "shim up to date"
    fi

    # 3. The Wine prefix. system.reg is written last by wineboot, so its
    #    presence means a finished prefix.
    if [ ! -f "$WINEPREFIX/system.reg" ]; then
        say "creating Wine prefix $WINEPREFIX"
        rm -rf "$WINEPREFIX"
        mkdir -p "$WINEPREFIX"
        wineboot --init >/dev/null 2>&1
        # Wait for this prefix's wineserver to flush the registry and exit.
        wineserver -w
        [ -f "$WINEPREFIX/system.reg" ] || { say "wineboot did not create $WINEPREFIX"; exit 1; }
        say "created Wine prefix"
    else
        info "Wine prefix exists"
    fi

    # 4. The shim into the prefix, where Wine's loader finds it for every exe.
    local dst="$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
    if ! cmp -s "$WININETD_WIN_SHIM" "$dst"; then
        cp "$WININETD_WIN_SHIM" "$dst"
        say "installed shim into $dst"
    else
        info "shim installed in prefix"
    fi
)

_wininetd_win_setup
_wininetd_rc=$?
unset -f _wininetd_win_setup
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    exit "$_wininetd_rc"
fi
# Sourced: don't exit the caller's shell, but let it see the failure.
(exit "$_wininetd_rc")
