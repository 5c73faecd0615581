#!/usr/bin/env bash
# Wheelhouse for offline image builds: every wheel reco's images install, resolved on the host with the
# pinned constraints (the host reaches PyPI; containers here cannot verify PyPI's TLS). The Dockerfiles
# then install with `pip install --no-index --find-links /wheels`. Cached: re-resolves only when
# pyproject.toml or constraints.txt changed (a stamp holds their hash).
#   RECO_WHEELHOUSE  directory (default deploy/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${RECO_WHEELHOUSE:-deploy/wheels}"
PIP="${PIP:-.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"
HASH="$(cat pyproject.toml constraints.txt "$0" | sha256sum | cut -c1-16)"
if [ -f "$DIR/.stamp" ] && [ "$(cat "$DIR/.stamp")" = "$HASH" ]; then
  echo "wheelhouse $DIR: up to date ($(ls "$DIR" | grep -c '\.whl$') wheels, cached)"
  exit 0
fi
mkdir -p "$DIR"
echo "wheelhouse $DIR: resolving reco[serving,pipeline] + build tools with constraints.txt"
# Debian bookworm's python3 is 3.11.2: redis then also needs async-timeout, which the host (3.11.7) skips.
# Only binary wheels: nothing is compiled inside the images. The project itself is installed from source
# in the image, so its own sdist is not kept.
LOG="$DIR/.download.log"
$PIP download -q --disable-pip-version-check --only-binary=:all: -c constraints.txt -d "$DIR" \
  '.[serving,pipeline]' 'setuptools>=68' wheel \
  async-timeout >"$LOG" 2>&1 || { grep -E 'ERROR|error' "$LOG" >&2; exit 1; }
rm -f "$DIR"/reco-*.tar.gz "$DIR"/reco-*.zip
# pip download exits 0 only when everything resolved; check the sentinels the images need.
for want in torch mlflow-3 mlflow_skinny apache_airflow_core fastapi psycopg2_binary celery setuptools; do
  compgen -G "$DIR/${want}*.whl" >/dev/null || { echo "error: wheelhouse lacks $want" >&2; exit 1; }
done
echo "$HASH" >"$DIR/.stamp"
echo "wheelhouse $DIR: $(ls "$DIR" | grep -c '\.whl$') wheels, $(du -sh "$DIR" | cut -f1)"
