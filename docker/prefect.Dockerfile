# The Prefect server of the compose stack. SQLAlchemy 2.1 breaks Prefect 3.8.8's scheduler (every loop:
# "Can't evaluate bulk DML statement" in _insert_scheduled_flow_runs), so served policies would never get
# a scheduled run; pin 2.0.x as pyproject.toml does.
FROM prefecthq/prefect:3.8.8-python3.11
RUN python -m pip install --no-cache-dir 'sqlalchemy[asyncio]>=2.0,<2.1'
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false
EXPOSE 4200
