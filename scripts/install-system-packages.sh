#!/bin/sh
# Installs the system packages the container tests and `make image` need (podman, runc, mmdebstrap)
# and the browser the console's test drives (chromium),
# on Debian/Ubuntu as root only, and only when one is missing: fast and silent when all are there.
# Elsewhere it does nothing: the tests that need podman are skipped and say why.
# Called by `make install`; safe to run again (idempotent).
set -eu

# chromium: the web console's browser test (tests/console/test_browser.py) and its screenshots.
PACKAGES="podman runc catatonit mmdebstrap uidmap chromium"

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    exit 0
fi

missing=""
for pkg in $PACKAGES; do
    # dpkg-query's status is "install ok installed" only for a fully installed package.
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0

echo "installing system packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has no package lists yet; refresh them once before installing. A failure (no
# mirror reachable) is not fatal: the project still builds, and the container tests skip, saying why.
# shellcheck disable=SC2086  # one word per package
if ! { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $missing >/dev/null; }; then
    echo "warning: could not install$missing; container jobs and make image need them" >&2
fi
