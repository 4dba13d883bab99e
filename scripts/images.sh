#!/usr/bin/env bash
# Builds Shoal's sample images into the local Docker Engine, offline:
#   shoal/hello:v1, shoal/hello:v2 and shoal/hello:unhealthy
# from cmd/hello. The binary is built with Go on this machine (static,
# CGO_ENABLED=0) and `docker build` gets a context holding only the binary
# and a Dockerfile; the images are FROM scratch, so nothing is pulled.
# Each is also saved as a tarball (`docker save`), for nodes without a
# Docker Engine: bin/images/hello-TAG.tar, loaded with
# `shoal image load bin/images/hello-TAG.tar` into a node's image store.
#
# Usage: scripts/images.sh [TAG...]   (default: v1 v2 unhealthy)
# Env:   GO (default go), DOCKER (default docker),
#        IMAGES_DIR (default bin/images; empty: no tarballs).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
DOCKER=${DOCKER:-docker}
IMAGES_DIR=${IMAGES_DIR-bin/images}

if ! "$DOCKER" info >/dev/null 2>&1; then
  echo "images.sh: the Docker Engine does not answer ($DOCKER info failed)" >&2
  exit 1
fi
# Build for the Engine's platform (normally this machine's).
goarch=$("$DOCKER" version --format '{{.Server.Arch}}' 2>/dev/null || true)
goarch=${goarch:-$("$GO" env GOARCH)}
# Without the buildx plugin the CLI must use the classic builder.
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! "$DOCKER" buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi

# One build at a time (test packages may call this concurrently): a second
# build of the same tag then reuses the first's layers, leaving no
# dangling image behind.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TMPDIR:-/tmp}/shoal-images.lock"
  flock 9
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# image TAG VERSION DOCKERFILE
image() {
  local tag=$1 version=$2 dockerfile=$3 ctx="$work/$1"
  mkdir -p "$ctx"
  CGO_ENABLED=0 GOOS=linux GOARCH="$goarch" "$GO" build -trimpath -buildvcs=false \
    -ldflags "-s -w -X main.version=$version" -o "$ctx/hello" ./cmd/hello
  cp "images/hello/$dockerfile" "$ctx/Dockerfile"
  local out
  if ! out=$("$DOCKER" build --quiet --label "org.opencontainers.image.version=$version" \
    --tag "shoal/hello:$tag" "$ctx" 2>&1); then
    echo "$out" >&2
    exit 1
  fi
  echo "built shoal/hello:$tag"
  if [ -n "$IMAGES_DIR" ]; then
    # Saved under a temporary name, then renamed: never a half tarball.
    mkdir -p "$IMAGES_DIR"
    local tarball="$IMAGES_DIR/hello-$tag.tar"
    if ! out=$("$DOCKER" save -o "$tarball.tmp" "shoal/hello:$tag" 2>&1); then
      rm -f "$tarball.tmp"
      echo "$out" >&2
      exit 1
    fi
    mv -f "$tarball.tmp" "$tarball"
    echo "saved shoal/hello:$tag as $tarball"
  fi
}

tags=("$@")
[ ${#tags[@]} -gt 0 ] || tags=(v1 v2 unhealthy)
for tag in "${tags[@]}"; do
  case $tag in
    v1 | v2) image "$tag" "$tag" Dockerfile ;;
    unhealthy) image unhealthy unhealthy Dockerfile.unhealthy ;;
    *) echo "images.sh: unknown image tag $tag (want v1, v2 or unhealthy)" >&2; exit 2 ;;
  esac
done
