#!/usr/bin/env bash
# Installs the Debian packages the tests use when they are missing, so that
# `make test` runs the same on a fresh machine as on a developer's: each
# tool is checked first and apt runs only for what is absent.
set -euo pipefail

# command package...
need=(
  "promtool prometheus"
  "docker-registry docker-registry"
  "chromium chromium fonts-liberation" # the dashboard's browser test (headless)
)
missing=()
for pair in "${need[@]}"; do
  cmd=${pair%% *} pkgs=${pair#* }
  # shellcheck disable=SC2206 # one word per package
  command -v "$cmd" >/dev/null 2>&1 || missing+=($pkgs)
done
# As root the routing mesh runs on nftables, and its kernel-datapath tests
# need the nft command (without root they skip, and nft is not needed).
if [ "$(id -u)" -eq 0 ] && ! command -v nft >/dev/null 2>&1; then
  missing+=(nftables)
fi
# As root the container runtime runs tasks with runc, and its tests need it.
if [ "$(id -u)" -eq 0 ] && ! command -v runc >/dev/null 2>&1; then
  missing+=(runc)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
  exit 1
fi
echo "test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Packages that start a system service on install (prometheus): the tests
# start their own instances, so stop it.
if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus 2>/dev/null || true; fi
pkill -x prometheus 2>/dev/null || true
# docker-registry's service likewise: the registry tests run their own
# instances, each with its own config, port and storage.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now docker-registry 2>/dev/null || true; fi
if command -v service >/dev/null 2>&1; then service docker-registry stop >/dev/null 2>&1 || true; fi
