# One image for the project: API server, online learner and every Airflow component.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RECO_HOME=/var/lib/reco AIRFLOW_HOME=/opt/airflow \
    MALLOC_MMAP_THRESHOLD_=16777216 MALLOC_TRIM_THRESHOLD_=67108864

RUN apt-get update && apt-get install -y --no-install-recommends curl git && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 50000 reco
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY reco ./reco
COPY serving ./serving
# The CPU build of torch keeps the image small; Celery and PostgreSQL drivers are production-only extras.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install -c constraints.txt . apache-airflow-providers-celery==3.26.0 psycopg2-binary==2.9.13
COPY dags ./dags
COPY experiments.yaml ./
RUN mkdir -p /var/lib/reco /opt/airflow && chown -R reco /var/lib/reco /opt/airflow
USER reco
EXPOSE 8000
CMD ["reco", "serve", "--host", "0.0.0.0", "--port", "8000"]
