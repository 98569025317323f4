#!/usr/bin/env bash
# Builds the recohop image (default tag recohop:<package version>, what the Kubernetes manifests name) from
# collector-config/container/Containerfile with the repository as the context.
#   usage: build.sh [TAG]
#   BUILDER=buildah|podman|docker   (default: the first one found; buildah and podman need no daemon)
#   BASE=IMAGE                      (default: docker.io/library/debian:bookworm-slim; BASE=debian builds a
#                                    bookworm base from Debian's packages with base-from-debian.sh)
#   EXTRA_CA_FILE=PATH              (buildah/podman: a CA bundle pip trusts during the build, for a proxy)
#   BUILDAH_ISOLATION=chroot        (buildah's own variable: RUN steps without an OCI runtime, e.g. in a VM
#                                    whose cgroups crun refuses)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml")"
tag="${1:-recohop:$version}"
builder="${BUILDER:-$(command -v buildah || command -v podman || command -v docker || true)}"
if [ -z "$builder" ]; then
  echo "no image builder: install buildah (Debian: apt-get install buildah), podman or docker" >&2
  exit 2
fi
base="${BASE:-docker.io/library/debian:bookworm-slim}"
if [ "$base" = debian ]; then
  base="$(bash "$here/base-from-debian.sh")"
fi
args=(-f "$here/Containerfile" -t "$tag" --build-arg "BASE=$base")
if [ -n "${EXTRA_CA_FILE:-}" ]; then  # buildah/podman: the CA bundle is mounted for the build's RUN steps only
  args+=(-v "$EXTRA_CA_FILE:/run/recohop-build-ca.crt:ro" --build-arg BUILD_CA=/run/recohop-build-ca.crt)
fi
case "$(basename "$builder")" in
  buildah) "$builder" bud --format docker --layers "${args[@]}" "$root" ;;  # docker format keeps HEALTHCHECK
  podman) "$builder" build --format docker "${args[@]}" "$root" ;;
  *) "$builder" build "${args[@]}" "$root" ;;
esac
echo "$tag"
