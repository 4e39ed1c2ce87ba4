# The MLflow tracking server of the compose stack: Postgres for runs and the registry, S3 (MinIO) for artifacts.
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary boto3
ENV MLFLOW_DISABLE_TELEMETRY=true
EXPOSE 5000
