#!/usr/bin/env bash
# Headless Chromium + its WebDriver for the browser tests (tests/test_rate_page.py,
# tests/test_mlflow_ui.py). Part of the README's first command. Idempotent: does nothing
# when both binaries are already there. Debian/Ubuntu (apt); sudo when not root.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get here; install Chromium and its chromedriver as /usr/bin/chromium" \
         "and /usr/bin/chromedriver by hand (the browser tests need them)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium chromium-driver fonts-liberation

/usr/bin/chromium --version
/usr/bin/chromedriver --version
