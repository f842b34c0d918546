#!/usr/bin/env bash
# Builds the Windows release zip from Linux:
#   target/windows/wininetd-<version>-x86_64-windows.zip
# holding wininetd-<version>-x86_64-windows\ with wininetd.exe (release
# build; version information and manifest inside), wininetd.conf and
# wininetd.toml examples with Windows paths, README.txt, the docs as text,
# CHANGELOG.txt and LICENSE.txt (CRLF line ends, for Notepad of old).
# Prints the zip's path last.
#
#   scripts/windows-zip.sh [--profile dev]   (dev: quicker, for tests only)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
if [ "${1:-}" = --profile ]; then profile=$2; fi
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")

command -v zip >/dev/null || { echo "windows-zip: zip is missing (apt install zip)" >&2; exit 1; }
WININETD_WIN_QUIET=1 scripts/windows-cargo.sh build --profile "$profile" --bin wininetd >&2
. scripts/windows-env.sh >/dev/null 2>&1

version=$(cargo pkgid -p wininetd | sed 's/.*[#@]//')
name="wininetd-$version-x86_64-windows"
out="$WININETD_WIN_TARGET_DIR/zip"
rm -rf "$out/$name" "$WININETD_WIN_TARGET_DIR/$name.zip"
mkdir -p "$out/$name/docs"
crlf() { sed 's/\r$//; s/$/\r/' "$1" >"$2"; }
cp "$WININETD_WIN_TARGET_DIR/$WININETD_WIN_TARGET/$dir/wininetd.exe" "$out/$name/"
crlf examples/windows/wininetd.conf "$out/$name/wininetd.conf"
crlf examples/windows/wininetd.toml "$out/$name/wininetd.toml"
crlf README.md "$out/$name/README.txt"
crlf CHANGELOG.md "$out/$name/CHANGELOG.txt"
crlf LICENSE "$out/$name/LICENSE.txt"
for d in docs/*.md; do
    crlf "$d" "$out/$name/docs/$(basename "$d" .md).txt"
done
(cd "$out" && zip -q -X -r "../$name.zip" "$name")
echo "$WININETD_WIN_TARGET_DIR/$name.zip"
