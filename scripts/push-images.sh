#!/usr/bin/env bash
# Pushes the sample images (scripts/images.sh) to a local registry when one
# runs there: shoal/hello:TAG becomes $REGISTRY/shoal/hello:TAG, pushed with
# the docker CLI (the Engine allows plain HTTP to 127.0.0.0/8). With no
# registry answering it says so and pushes nothing; with REGISTRY set
# explicitly that is an error. The registry's names are removed from the
# Engine after the push, so that workers here pull them as any node would.
#
# Usage: scripts/push-images.sh [TAG...]   (default: v1 v2 unhealthy)
# Env:   REGISTRY (default 127.0.0.1:5000), DOCKER (default docker).
set -euo pipefail
DOCKER=${DOCKER:-docker}
explicit=${REGISTRY:+yes}
REGISTRY=${REGISTRY:-127.0.0.1:5000}

if ! curl -fsS -o /dev/null --max-time 3 "http://$REGISTRY/v2/" 2>/dev/null; then
  if [ -n "$explicit" ]; then
    echo "push-images.sh: no registry answers on http://$REGISTRY/v2/ (start one with scripts/registry.sh start)" >&2
    exit 1
  fi
  echo "no registry on $REGISTRY: sample images not pushed (scripts/registry.sh start runs one)"
  exit 0
fi
tags=("$@")
[ ${#tags[@]} -gt 0 ] || tags=(v1 v2 unhealthy)
for tag in "${tags[@]}"; do
  "$DOCKER" tag "shoal/hello:$tag" "$REGISTRY/shoal/hello:$tag"
  out=$("$DOCKER" push "$REGISTRY/shoal/hello:$tag" 2>&1) || { echo "$out" >&2; exit 1; }
  "$DOCKER" rmi "$REGISTRY/shoal/hello:$tag" >/dev/null
  echo "pushed $REGISTRY/shoal/hello:$tag ($(echo "$out" | grep -o 'sha256:[0-9a-f]*' | tail -1))"
done
