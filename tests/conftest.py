import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EDITFLOW_QUIET", "1")
os.environ.setdefault("EDITFLOW_CACHE", tempfile.mkdtemp(prefix="editflow-cache-"))  # never the user's cache


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
