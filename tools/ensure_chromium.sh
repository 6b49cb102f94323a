#!/usr/bin/env bash
# Makes sure Debian's chromium and chromium-driver are present for the explorer's browser tests
# (tests/test_explorer_browser.py drives /usr/bin/chromium through /usr/bin/chromedriver).
# As root with apt-get (CI, these machines) it installs them when missing; elsewhere it says what to do.
# GRADSIGHT_NO_BROWSER_INSTALL=1 skips the install (the browser tests then skip outside CI, fail in CI).
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "${GRADSIGHT_NO_BROWSER_INSTALL:-0}" = 1 ]; then
  echo "ensure_chromium: GRADSIGHT_NO_BROWSER_INSTALL=1, not installing chromium" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_chromium: /usr/bin/chromium or /usr/bin/chromedriver missing; install Debian's 'chromium' and" \
       "'chromium-driver' packages to run the explorer's browser tests (they skip without them, except in CI)" >&2
  exit 0
fi
echo "ensure_chromium: installing chromium and chromium-driver with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
