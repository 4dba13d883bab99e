#!/usr/bin/env bash
# Runs a local image registry for trying Shoal with images from a registry:
# Debian's docker-registry (scripts/test-deps.sh installs it) on
# 127.0.0.1:5000 by default, plain HTTP (the Docker Engine allows it on
# 127.0.0.0/8), its config and storage under ${TMPDIR:-/tmp}/shoal-registry-PORT.
#
# Usage: scripts/registry.sh start|stop|status   (REGISTRY=HOST:PORT to move it)
set -euo pipefail
REGISTRY=${REGISTRY:-127.0.0.1:5000}
dir=${TMPDIR:-/tmp}/shoal-registry-${REGISTRY##*:}
pidfile=$dir/registry.pid

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case ${1:-} in
  start)
    if running; then echo "registry already running on $REGISTRY (pid $(cat "$pidfile"))"; exit 0; fi
    command -v docker-registry >/dev/null || { echo "registry.sh: docker-registry is not installed: run scripts/test-deps.sh as root" >&2; exit 1; }
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<CFG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
CFG
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 50); do
      if curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null; then
        echo "registry running on $REGISTRY (pid $(cat "$pidfile"); log $dir/registry.log)"
        exit 0
      fi
      running || break
      sleep 0.1
    done
    echo "registry.sh: the registry did not start; see $dir/registry.log" >&2
    exit 1
    ;;
  stop)
    if running; then kill "$(cat "$pidfile")"; echo "registry on $REGISTRY stopped"; else echo "no registry running on $REGISTRY"; fi
    rm -f "$pidfile"
    ;;
  status)
    if running; then echo "registry running on $REGISTRY (pid $(cat "$pidfile"))"; else echo "no registry running on $REGISTRY"; exit 1; fi
    ;;
  *)
    echo "usage: scripts/registry.sh start|stop|status   (REGISTRY=HOST:PORT, default 127.0.0.1:5000)" >&2
    exit 2
    ;;
esac
