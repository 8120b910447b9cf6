#!/usr/bin/env bash
# Make sure a Chromium the dashboard's browser tests can drive is at /usr/bin/chromium.
# Playwright's own browser download is not used (it needs a host the test machines cannot
# reach): the tests launch Debian's `chromium` package through Playwright's driver.
# An existing /usr/bin/chromium is left as it is. A missing one is installed with apt-get
# (root only; as another user the script says what to run instead).
# Usage: scripts/ensure-browser.sh
set -euo pipefail

CHROMIUM=/usr/bin/chromium

say() { printf 'ensure-browser: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

if [ -x "$CHROMIUM" ]; then
    say "$CHROMIUM is present: $("$CHROMIUM" --version 2>/dev/null || echo 'version unknown')"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || die "$CHROMIUM is missing and apt-get is not available: install Chromium so that $CHROMIUM exists"
[ "$(id -u)" -eq 0 ] \
    || die "$CHROMIUM is missing: run 'sudo apt-get install -y chromium' (or this script as root)"

say "installing Debian's chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || say "apt-get update failed; trying the package lists already here"
apt-get install -y -qq --no-install-recommends chromium >/dev/null
[ -x "$CHROMIUM" ] || die "apt-get finished but $CHROMIUM is still missing"
say "installed: $("$CHROMIUM" --version 2>/dev/null || echo 'version unknown')"
