#!/usr/bin/env bash
# The container tools the image build and the container tests use: podman (with buildah and
# runc; scripts/containers.conf selects runc) and mmdebstrap (a Debian base image when no
# registry is reachable). Installs them with apt-get when missing (as root); idempotent.
set -euo pipefail
missing=()
for tool in podman:podman buildah:buildah runc:runc mmdebstrap:mmdebstrap; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "container-tools: missing ${missing[*]}; install them (Debian: apt-get install -y ${missing[*]})" >&2
  exit 1
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
echo "container-tools: installed ${missing[*]}"
