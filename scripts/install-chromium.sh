#!/usr/bin/env bash
# Installs Debian's chromium, which the dashboard's browser test
# (cmd/shoal TestDashboardBrowser, through chromedp) drives headless, when
# it is missing. `make test` runs it first. Needs root for apt-get.
set -euo pipefail
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then
    exit 0
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "install-chromium.sh: chromium is missing; install Debian's chromium package as root (apt-get install chromium)" >&2
  exit 1
fi
echo "== installing Debian's chromium for the dashboard's browser test"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
