#!/usr/bin/env bash
# Local base image for offline builds: Debian bookworm from Debian's own packages (debootstrap) and
# `docker import`, so no container registry is needed. Cached: does nothing when the tag exists.
#   RECO_BASE_IMAGE  tag to create (default reco-base:bookworm)
#   DEBIAN_MIRROR    Debian mirror (default http://deb.debian.org/debian)
# The image carries Debian's python3 (3.11) + venv, the same interpreter line as python:3.11-slim, so the
# Dockerfiles' `FROM ${BASE_IMAGE}` works with either.
set -euo pipefail
TAG="${RECO_BASE_IMAGE:-reco-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG: present (cached)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
ROOT="$(mktemp -d /tmp/reco-base.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
echo "base image $TAG: debootstrap bookworm from $MIRROR (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR" \
  >"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log" >&2; exit 1; }
rm -f "$ROOT.log"
# Small and reproducible: no apt lists, docs or caches in the layer.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/*
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$ROOT/etc/apt/apt.conf.d/99reco"
tar -C "$ROOT" -c . | docker import \
  -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["bash"]' - "$TAG" >/dev/null
echo "base image $TAG: built ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
