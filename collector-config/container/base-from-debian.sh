#!/usr/bin/env bash
# A Debian 12 (bookworm) base image made from Debian's packages with debootstrap, for machines that reach the
# Debian archive but no image registry. Prints the image name; build.sh passes it as BASE.
#   usage: base-from-debian.sh [IMAGE]      (default localhost/recohop-base:bookworm)
# Needs root, debootstrap and buildah. Reused when the image exists.
set -euo pipefail
image="${1:-localhost/recohop-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if buildah inspect --type image "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi
rootfs="$(mktemp -d /var/tmp/recohop-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >&2
# As the slim images: no apt lists, no docs, no caches.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
container="$(buildah from scratch)"
buildah copy --quiet "$container" "$rootfs" / >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$container"
buildah commit --quiet --rm "$container" "$image" >/dev/null
echo "$image"
