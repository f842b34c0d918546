#!/usr/bin/env bash
# Builds the Debian package with cargo-deb:
#   target/debian/wininetd_<version>-1_<arch>.deb
# (with a Debian revision: without one the package is native, and lintian
# wants its changelog named changelog.gz, not changelog.Debian.gz).
# The man pages, completions and the Debian changelog are generated first
# into target/docs (examples/gen_docs.rs: from the clap definition and
# docs/*.md, so they cannot drift). Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb

mkdir -p target/docs
cargo run --quiet --example gen_docs -- target/docs

version=$(cargo pkgid -p wininetd | sed 's/.*[#@]//')
maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml)
# Dated by the last commit, so the same tree builds the same changelog.
when=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
cat >target/docs/changelog <<CHANGES
wininetd ($version-1) unstable; urgency=medium

  * Upstream release $version; its changes are in
    /usr/share/doc/wininetd/CHANGELOG.md.

 -- $maintainer  $when
CHANGES

cargo deb --output target/debian/ "$@" | tail -n 1
