import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EDITFLOW_QUIET", "1")
os.environ.setdefault("EDITFLOW_CACHE", tempfile.mkdtemp(prefix="editflow-cache-"))  # never the user's cache
os.environ.setdefault("EDITFLOW_HOME", tempfile.mkdtemp(prefix="editflow-home-"))  # nor their registry
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="editflow-prefect-"))  # nor their Prefect db
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def world():
    from editflow.world import DEFAULT_WORLD

    return DEFAULT_WORLD


@pytest.fixture(scope="session")
def embedded_pipe():
    from editflow.models.pipeline import load_pipeline

    return load_pipeline()


@pytest.fixture(scope="session")
def judge():
    from editflow.models.evaluator import Evaluator
    from editflow.models.pipeline import embedded_dir

    return Evaluator.from_dir(embedded_dir() / "evaluator")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """An ACE patch for star on the embedded model with a passing gate report and a failing one
    (a stricter gate file): (patch, passing report folder, failing report folder)."""
    from typer.testing import CliRunner

    from editflow.cli import app

    runner, fast = CliRunner(), ["--images", "4", "--steps", "8", "--attack-steps", "10",
                                     "--attack-restarts", "2"]
    d = tmp_path_factory.mktemp("evaluated")
    patch = d / "star.safetensors"
    args = ["erase", "--concept", "star", "--patch-only", "--no-check", "--out", str(patch)]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, ["eval", "--patch", str(patch), "--out", str(d / "pass"), *fast])
    assert res.exit_code == 0, res.output
    (d / "strict.yaml").write_text("default: {clip_score_preserved: {min: 99.0}}\n")
    res = runner.invoke(app, ["eval", "--patch", str(patch), "--out", str(d / "fail"), "--gates",
                              str(d / "strict.yaml"), *fast])
    assert res.exit_code == 3, res.output
    return patch, d / "pass", d / "fail"
