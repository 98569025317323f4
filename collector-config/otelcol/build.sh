#!/usr/bin/env bash
# Builds the OpenTelemetry Collector distribution of builder.yaml with the OpenTelemetry Collector Builder
# (ocb) into a cache outside git, reusing it when present, and prints the binary's path.
#   bash collector-config/otelcol/build.sh          # build when missing; print the path
#   bash collector-config/otelcol/build.sh --path   # only print where the binary is (or would be)
# The cache is keyed by the manifest's content, so a changed manifest builds anew.
# RECOHOP_OTELCOL_CACHE moves the cache (default: ${XDG_CACHE_HOME:-~/.cache}/recohop/otelcol).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
manifest=$here/builder.yaml
version=$(awk '$1 == "version:" {print $2; exit}' "$manifest")
name=$(awk '$1 == "name:" {print $2; exit}' "$manifest")
digest=$(sha256sum "$manifest" | cut -c1-12)
cache=${RECOHOP_OTELCOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/recohop/otelcol}
binary=$cache/$version-$digest/$name

if [ "${1:-}" = "--path" ] || [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: the Go toolchain is needed to build the collector (go not found on PATH)" >&2
  exit 1
fi

began=$(date +%s)
tools=$cache/builder-v$version
if [ ! -x "$tools/builder" ]; then
  echo "build.sh: installing the OpenTelemetry Collector Builder v$version" >&2
  GOBIN=$tools go install "go.opentelemetry.io/collector/cmd/builder@v$version" >&2
fi
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$manifest" "$work/builder.yaml"
echo "build.sh: building $name $version (a few minutes on two cores; log in $work/build.log while it runs)" >&2
if ! (cd "$work" && "$tools/builder" --config builder.yaml >build.log 2>&1); then
  tail -n 40 "$work/build.log" >&2
  echo "build.sh: the collector build failed (manifest $manifest)" >&2
  exit 1
fi
mkdir -p "$(dirname "$binary")"
mv "$work/_build/$name" "$binary.tmp" && mv "$binary.tmp" "$binary"
echo "build.sh: built $binary in $(( $(date +%s) - began )) s, $(du -m "$binary" | cut -f1) MiB" >&2
echo "$binary"
