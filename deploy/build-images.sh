#!/usr/bin/env bash
# Build every image docker-compose.yml runs, tagged as the compose file names them (then
# `docker-compose up -d` starts without building). Offline by default (no registry, no PyPI in the build):
#   base image from Debian packages (deploy/base-image.sh), Python wheels from the host's wheelhouse
#   (deploy/wheelhouse.sh). Both are cached between runs, and Docker's layer cache keeps unchanged steps.
# RECO_BUILD_MODE=online builds from the Dockerfiles' pinned registry images and PyPI instead.
#   RECO_IMAGE_TAG (default latest)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${RECO_IMAGE_TAG:-latest}"
MODE="${RECO_BUILD_MODE:-offline}"
ts() { date -u +%H:%M:%S; }
build() {  # name context [docker build args...]
  local name="$1" context="$2" t0=$SECONDS
  shift 2
  echo "$(ts) build $name:$TAG"
  if ! docker build -q "${ARGS[@]}" "$@" -t "$name:$TAG" "$context" >/tmp/reco-build-$name.log 2>&1; then
    tail -30 /tmp/reco-build-$name.log >&2
    echo "error: building $name failed (log: /tmp/reco-build-$name.log)" >&2
    exit 1
  fi
  echo "$(ts)   $name:$TAG in $((SECONDS - t0)) s"
}
ARGS=()
PY_ARGS=()
if [ "$MODE" = offline ]; then
  deploy/base-image.sh
  deploy/wheelhouse.sh
  BASE="${RECO_BASE_IMAGE:-reco-base:bookworm}"
  ARGS=(--build-arg "BASE_IMAGE=$BASE")
  PY_ARGS=(--build-arg "PIP_ARGS=--no-index --find-links /wheels")
else
  mkdir -p deploy/wheels  # the Dockerfiles copy it (empty: PyPI serves everything)
fi
build reco-postgres deploy/postgres
build reco-redis deploy/redis
build reco-proxy deploy/proxy
build reco-prometheus deploy/prometheus
build reco-mlflow . -f mlflow/Dockerfile "${PY_ARGS[@]}"
build reco . --target serving "${PY_ARGS[@]}"
build reco-pipeline . --target pipeline "${PY_ARGS[@]}"
echo "$(ts) images built ($MODE)"
