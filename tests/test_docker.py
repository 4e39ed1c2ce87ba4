"""The container files: the compose stack parses (`docker compose config`; no Docker engine runs here)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    raise AssertionError("needs docker compose (Debian: apt-get install docker-compose; .ci/run installs it)")


@pytest.mark.slow
def test_compose_stack_is_valid_and_complete():
    out = subprocess.run([*_compose(), "-f", str(ROOT / "docker" / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {"postgres", "minio", "mlflow", "prefect", "worker"} <= set(services)
    cmd = services["mlflow"]["command"]
    cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
    assert "postgresql://" in cmd and "s3://mlflow" in cmd
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert services["worker"]["command"][:2] == ["policy", "serve"]
    for name in ("Dockerfile", "Dockerfile.cuda", "mlflow.Dockerfile"):
        assert (ROOT / "docker" / name).is_file()
    policy = services["worker"]["command"][2]
    assert (ROOT / policy).is_file()
