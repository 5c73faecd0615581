#!/bin/sh
# Start the MLflow tracking server.
#   MLFLOW_BACKEND_STORE_URI   database URI (default: SQLite under /mlflow; compose sets PostgreSQL)
#   MLFLOW_ARTIFACTS_DESTINATION  where served artifacts live (default /mlflow/artifacts)
#   MLFLOW_ALLOWED_HOSTS       hosts clients may use (without it non-local clients get 403 "Invalid Host header")
#   MLFLOW_PORT, MLFLOW_WORKERS
set -eu
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:////mlflow/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-/mlflow/artifacts}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-2}"
ALLOWED="${MLFLOW_ALLOWED_HOSTS:-localhost,127.0.0.1,mlflow,mlflow:${PORT},localhost:${PORT},127.0.0.1:${PORT}}"
# The job queue locks SQLite and is not used by reco.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
mkdir -p "$ARTIFACTS"
exec mlflow server \
    --backend-store-uri "$BACKEND" \
    --artifacts-destination "$ARTIFACTS" \
    --serve-artifacts \
    --host 0.0.0.0 \
    --port "$PORT" \
    --workers "$WORKERS" \
    --allowed-hosts "$ALLOWED"
