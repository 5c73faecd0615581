# reco images, two targets of one multi-stage build (docs/operations.md, "Images"):
#   serving   API (`reco serve`), online learner (`reco learn`), stream sink (`reco sink`): reco[serving]
#   pipeline  every Airflow component running the DAG tasks, and `reco bootstrap`: reco[serving,pipeline]
# Both run as the non-root user reco (uid 50000); state lives under /var/lib/reco (RECO_HOME).
#
# Offline (no registry, no PyPI in the build): deploy/build-images.sh passes
#   --build-arg BASE_IMAGE=reco-base:bookworm (Debian's own packages, deploy/base-image.sh)
#   --build-arg PIP_ARGS="--no-index --find-links /wheels" (the host's wheelhouse, deploy/wheelhouse.sh).
# With a registry the defaults build as they are: python:3.11.14-slim-bookworm (pinned digest), PyPI + the
# CPU torch index.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ARG PIP_ARGS="--find-links /wheels --extra-index-url https://download.pytorch.org/whl/cpu"

# --- build stages: the dependencies in a venv at /opt/venv. They change only with pyproject.toml /
# constraints.txt, so a code change reuses them (the source is installed in the runtime stages).
FROM ${BASE_IMAGE} AS build-serving
ARG PIP_ARGS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY deploy/wheels/ /wheels/
COPY pyproject.toml constraints.txt /src/
COPY deploy/requirements.py /src/deploy/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -q $PIP_ARGS -c /src/constraints.txt "setuptools>=68" wheel \
    && python3 /src/deploy/requirements.py serving >/src/requirements.txt \
    && /opt/venv/bin/pip install -q $PIP_ARGS -c /src/constraints.txt -r /src/requirements.txt

FROM build-serving AS build-pipeline
ARG PIP_ARGS
RUN python3 /src/deploy/requirements.py serving pipeline >/src/requirements.txt \
    && /opt/venv/bin/pip install -q $PIP_ARGS -c /src/constraints.txt -r /src/requirements.txt

# --- runtime stages: the venv, the code and the config; no wheels or build files
FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECO_HOME=/var/lib/reco RECO_EXPERIMENTS_PATH=/app/experiments.yaml \
    MALLOC_MMAP_THRESHOLD_=16777216 MALLOC_TRIM_THRESHOLD_=67108864
# Volumes mounted here are created from these directories, so they start owned by reco.
RUN groupadd --gid 50000 reco && useradd --uid 50000 --gid reco --home-dir /var/lib/reco --no-create-home reco \
    && mkdir -p /var/lib/reco /opt/airflow /app && chown reco:reco /var/lib/reco /opt/airflow
WORKDIR /app

FROM runtime AS serving
COPY --from=build-serving /opt/venv /opt/venv
COPY pyproject.toml README.md /src/
COPY reco /src/reco
COPY serving /src/serving
RUN pip install -q --no-deps --no-build-isolation --no-cache-dir /src && rm -rf /src
COPY experiments.yaml /app/
USER reco
EXPOSE 8000 9100 9101
HEALTHCHECK --interval=15s --timeout=5s --retries=10 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"
CMD ["reco", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS pipeline
ENV AIRFLOW_HOME=/opt/airflow AIRFLOW__CORE__DAGS_FOLDER=/app/dags AIRFLOW__CORE__LOAD_EXAMPLES=false
COPY --from=build-pipeline /opt/venv /opt/venv
COPY pyproject.toml README.md /src/
COPY reco /src/reco
COPY serving /src/serving
RUN pip install -q --no-deps --no-build-isolation --no-cache-dir /src && rm -rf /src
COPY experiments.yaml /app/
COPY dags /app/dags
USER reco
EXPOSE 8080
CMD ["airflow", "version"]
