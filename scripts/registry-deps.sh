#!/usr/bin/env bash
# Installs what the registry tests need: Debian's docker-registry package
# (the distribution registry, /usr/bin/docker-registry). The tests start
# their own instances on loopback with their own config and storage, so the
# package's system service is stopped and disabled if it started one.
#
# Usage: scripts/registry-deps.sh   (as root; does nothing when installed)
set -euo pipefail

if command -v docker-registry >/dev/null 2>&1; then
  echo "docker-registry: $(command -v docker-registry)"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "registry-deps.sh: docker-registry is missing; run this script as root to install it (apt-get install docker-registry)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
  service docker-registry stop >/dev/null 2>&1 || true
fi
echo "docker-registry: $(command -v docker-registry)"
