"""The compose stack without Docker (the slow `docker compose config` check is in test_docker.py): the worker
starts only once MLflow and Prefect answer their health checks, which use only what their images hold, and
the build context leaves out what the images do not need."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_worker_waits_for_healthy_mlflow_and_prefect():
    services = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())["services"]
    assert services["worker"]["depends_on"] == {"mlflow": {"condition": "service_healthy"},
                                                "prefect": {"condition": "service_healthy"}}
    for name, url in (("mlflow", "http://localhost:5000/health"), ("prefect", "http://localhost:4200/api/health")):
        check = services[name]["healthcheck"]
        assert check["test"][:3] == ["CMD", "python", "-c"]  # no curl/wget in these images
        assert url in check["test"][3] and "urllib.request" in check["test"][3]
        compile(check["test"][3], f"{name} healthcheck", "exec")
        assert check["retries"] >= 10 and "start_period" in check
    prefect = services["prefect"]["build"]
    dockerfile = ((ROOT / "docker" / prefect["context"]).resolve() / prefect["dockerfile"]).read_text()
    assert "FROM prefecthq/prefect:3.8.8" in dockerfile and "sqlalchemy[asyncio]>=2.0,<2.1" in dockerfile


def test_dockerignore_keeps_the_context_small_but_complete():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for entry in (".git", ".venv", "out", ".work", "**/__pycache__", "**/mlruns", "**/*.db", "dist", "build"):
        assert entry in ignored
    for needed in ("pyproject.toml", "README.md", "editflow", "flows", "registry", "configs"):  # what Dockerfiles COPY
        assert not any(Path(needed).match(pattern) for pattern in ignored), needed
