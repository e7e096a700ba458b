#!/bin/sh
# Vendors hls.js (the console's HLS player) from the npm registry into the console's static dir.
# The result is committed: the console serves it itself (no CDN at run time) and `make install` needs
# no network for it. Run again after changing HLS_VERSION; `npm pack` checks the tarball against the
# registry's integrity hash, and the sha512 printed below is recorded in docs/console.md.
set -eu
HLS_VERSION=1.7.4
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/services/console/cosmos/console/static/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "hls.js@$HLS_VERSION" >/dev/null && tar -xzf "hls.js-$HLS_VERSION.tgz")
mkdir -p "$dest"
cp "$work/package/dist/hls.min.js" "$dest/hls.min.js"
cp "$work/package/LICENSE" "$dest/hls.js.LICENSE"
echo "hls.js $HLS_VERSION" > "$dest/VERSIONS"
sha256sum "$dest/hls.min.js"
