#!/usr/bin/env bash
# Install attnmt and everything its tests need into .venv: the README's quickstart and CI both run this.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser test (tests/test_browser.py) drives Debian's Chromium through Playwright; no browser is downloaded.
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: install Chromium (the browser test needs a 'chromium' on PATH)" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0          # the CPU wheel first, so no CUDA build is pulled in
.venv/bin/pip install -q -e ".[test]"
