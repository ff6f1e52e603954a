#!/usr/bin/env bash
# Build a container image with podman (or docker where its daemon runs): the CPU one from
# docker/Dockerfile.cpu by default, tagged tsvllm-cpu:<version>; print build time and size.
#
#   scripts/image.sh
#   TSVLLM_DOCKERFILE=docker/Dockerfile scripts/image.sh     # the GPU image, tsvllm:<version>
#
# Settings (environment):
#   TSVLLM_DOCKERFILE   the Dockerfile (default docker/Dockerfile.cpu; docker/Dockerfile: GPU)
#   TSVLLM_IMAGE        the tag (default tsvllm-cpu:<version from setup.py>; GPU: tsvllm:<version>)
#   TSVLLM_TARGET       build up to this stage only (runtime, dependencies; default: all)
#   TSVLLM_IMAGE_BASE   the base image (default: the Dockerfile's ARG BASE). When a Debian
#                       bookworm base is not present and cannot be pulled (no registry
#                       reachable), it is made here with mmdebstrap and imported as
#                       localhost/tsvllm-base:bookworm.
#   TORCH_INDEX         the CPU torch wheel's index (default PyPI's CPU index at pytorch.org;
#                       when it is unreachable, the pip settings below must provide the wheel)
# This machine's pip settings (its pip config files and PIP_* variables: indexes, wheel
# folders, constraints, CA bundle) are passed to the build as the secret "pip.conf", and the
# local folders and files they name are mounted read-only for the build only: none of them
# is stored in the image. With podman, CONTAINERS_CONF defaults to scripts/containers.conf.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v podman >/dev/null 2>&1; then
  ENGINE=podman
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/scripts/containers.conf}"
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
else
  echo "image: neither podman nor a running docker found; install podman (apt-get install -y podman buildah runc)" >&2
  exit 1
fi
VERSION=$(sed -n 's/^ *version="\([^"]*\)".*/\1/p' setup.py)
DOCKERFILE="${TSVLLM_DOCKERFILE:-docker/Dockerfile.cpu}"
if [ "$DOCKERFILE" = docker/Dockerfile.cpu ]; then
  IMAGE="${TSVLLM_IMAGE:-tsvllm-cpu:$VERSION}"
else
  IMAGE="${TSVLLM_IMAGE:-tsvllm:$VERSION}"
fi
# the Dockerfile's own default base (ARG BASE=...) unless TSVLLM_IMAGE_BASE names another
BASE="${TSVLLM_IMAGE_BASE:-$(sed -n 's/^ARG BASE=//p' "$DOCKERFILE")}"
TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

if ! image_exists "$BASE" && ! timeout 60 "$ENGINE" pull -q "$BASE" >/dev/null 2>&1; then
  case "$BASE" in
    debian:bookworm*) ;;  # a Debian bookworm base can be made here
    *)
      echo "image: cannot pull $BASE (pull it, or set TSVLLM_IMAGE_BASE to an image you have)" >&2
      exit 1
      ;;
  esac
  LOCAL_BASE=localhost/tsvllm-base:bookworm
  if ! image_exists "$LOCAL_BASE"; then
    command -v mmdebstrap >/dev/null 2>&1 || {
      echo "image: cannot pull $BASE and mmdebstrap is missing (apt-get install -y mmdebstrap)" >&2
      exit 1
    }
    echo "image: $BASE cannot be pulled; making $LOCAL_BASE with mmdebstrap"
    mmdebstrap --quiet --variant=minbase bookworm "$WORK/root"
    tar -C "$WORK/root" -c . | "$ENGINE" import - "$LOCAL_BASE" >/dev/null
    rm -rf "$WORK/root"
  fi
  BASE="$LOCAL_BASE"
fi

if [ -n "$TORCH_INDEX" ] && ! curl -sf --max-time 10 -o /dev/null "$TORCH_INDEX/torch/"; then
  echo "image: $TORCH_INDEX is unreachable; the pip settings provide torch"
  TORCH_INDEX=""
fi

# this machine's pip settings as one file, and the local paths they name mounted (read-only,
# for the build only) under /run/tsvllm-build: the image keeps only empty mount points there
"$(command -v python3)" - "$WORK/pip.conf" "$WORK/mounts" <<'EOF'
import configparser, os, sys
from pathlib import Path

files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), Path.home() / ".pip/pip.conf",
         Path.home() / ".config/pip/pip.conf"]
if os.environ.get("PIP_CONFIG_FILE"):
    files.append(Path(os.environ["PIP_CONFIG_FILE"]))
merged = configparser.RawConfigParser()
merged.read([f for f in files if f.is_file()])
if not merged.has_section("global"):
    merged.add_section("global")
for name, value in os.environ.items():  # PIP_FIND_LINKS=... is [global] find-links
    if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
        merged.set("global", name[4:].lower().replace("_", "-"), value)
mounts: dict[str, str] = {}


def inside(word: str) -> str:
    scheme = "file://" if word.startswith("file://") else ""
    path = word.removeprefix(scheme)
    if not path.startswith("/") or not os.path.exists(path):
        return word
    # an index's links may point beside its simple/ folder (../files): mount the parent
    source, rest = (str(Path(path).parent), "/simple") if path.endswith("/simple") else (path, "")
    target = mounts.setdefault(source, f"/run/tsvllm-build/{len(mounts)}-{Path(source).name}")
    return scheme + target + rest


for section in merged.sections():
    for key, value in merged.items(section):
        merged.set(section, key, " ".join(inside(word) for word in value.split()))
with open(sys.argv[1], "w") as out:
    merged.write(out)
Path(sys.argv[2]).write_text("".join(f"{s}:{t}:ro\n" for s, t in mounts.items()))
EOF
BUILD_ARGS=(--build-arg "BASE=$BASE" --build-arg "TORCH_INDEX=$TORCH_INDEX")
if [ -n "${TSVLLM_TARGET:-}" ]; then
  BUILD_ARGS+=(--target "$TSVLLM_TARGET")
fi
BUILD_ARGS+=(--secret "id=pip.conf,src=$WORK/pip.conf")
if [ "$ENGINE" = podman ]; then
  while read -r mount; do
    BUILD_ARGS+=(-v "$mount")
  done <"$WORK/mounts"
else
  export DOCKER_BUILDKIT=1  # docker build mounts no host folders: the pip settings alone go in
fi

echo "image: building $IMAGE from $DOCKERFILE${TSVLLM_TARGET:+ (up to stage $TSVLLM_TARGET)} on $BASE with $ENGINE"
START=$SECONDS
"$ENGINE" build -f "$DOCKERFILE" -t "$IMAGE" "${BUILD_ARGS[@]}" .
SIZE=$("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}')
echo "image: $IMAGE built in $((SECONDS - START)) s; $((SIZE / 1000000)) MB"
