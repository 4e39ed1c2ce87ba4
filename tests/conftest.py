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
