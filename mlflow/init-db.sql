-- Run once by the postgres image on first start: MLflow uses the default database (POSTGRES_DB=mlflow),
-- Airflow gets its own.
CREATE DATABASE airflow;
