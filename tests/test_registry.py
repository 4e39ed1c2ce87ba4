"""The MLflow registry on a real SQLite store: versions only for passing gates, no half versions,
aliases, a pyfunc model that generates, and `editflow registry ...` / `generate --model models:/...`."""

import json

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from editflow.cli import app
from editflow.cli.app import load_extensions
from editflow.errors import EditflowError
from registry.register import _using, describe, promote, register_patch, resolve_model_uri
from registry.store import Store

runner = CliRunner()
FAST = ["--images", "4", "--steps", "8", "--attack-steps", "10", "--attack-restarts", "1"]


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())


def _versions(store, name):
    return store.client().search_model_versions(f"name='{name}'")


def test_passing_patch_becomes_a_candidate_version_with_everything_a_reviewer_needs(evaluated, store):
    patch, passed, _ = evaluated
    reg = register_patch(patch, passed, "erase-star", store)
    assert reg.passed and reg.version == "1"
    client = store.client()
    mv = client.get_model_version_by_alias("erase-star", "candidate")
    assert str(mv.version) == "1"
    assert mv.tags["editflow.gate_status"] == "passed" and mv.tags["editflow.concepts"] == "star"
    assert mv.tags["editflow.method"] == "ace" and mv.tags["editflow.base_model"] == "embedded"
    assert len(mv.tags["editflow.base_hash"]) == 64
    assert "# Erasure patch: star" in mv.description and "| erasure_rate |" in mv.description
    assert "concept-inversion attack" in mv.description  # the robustness the evaluation measured
    run = client.get_run(reg.run_id)
    assert run.data.metrics["erasure_rate"] <= 0.05 and run.data.params["method"] == "ace"
    arts = {a.path for a in client.list_artifacts(reg.run_id, "report")}
    assert {"report/report.json", "report/report.md", "report/grid-target.png"} <= arts
    assert [a.path for a in client.list_artifacts(reg.run_id, "patch")] == ["patch/star.safetensors"]
    # the pyfunc model loads base + patch and generates
    with _using(store):
        model = mlflow.pyfunc.load_model("models:/erase-star@candidate")
    images = model.predict(["a red star", "a blue moon"], params={"seed": 1, "steps": 4})
    assert images.shape[0] == 2 and images.shape[-1] == 3 and images.dtype == np.uint8


def test_failed_gate_leaves_a_run_and_no_version(evaluated, store):
    patch, _, failed = evaluated
    reg = register_patch(patch, failed, "erase-star", store)
    assert not reg.passed and reg.version is None
    run = store.client().get_run(reg.run_id)
    assert run.data.tags["editflow.gate_status"] == "failed"
    assert {a.path for a in store.client().list_artifacts(reg.run_id, "report")} >= {"report/report.json"}
    assert _versions(store, "erase-star") == []


def test_a_crash_mid_registration_leaves_no_half_version(evaluated, store, monkeypatch):
    patch, passed, _ = evaluated
    from mlflow import MlflowClient

    def crash(self, *a, **k):
        raise RuntimeError("connection lost")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", crash)
    with pytest.raises(RuntimeError, match="connection lost"):
        register_patch(patch, passed, "erase-star", store)
    monkeypatch.undo()
    assert _versions(store, "erase-star") == []
    assert register_patch(patch, passed, "erase-star", store).version is not None  # the store still works


def test_promote_and_resolve(evaluated, store, tmp_path):
    patch, passed, failed = evaluated
    v1 = register_patch(patch, passed, "erase-star", store).version
    v2 = register_patch(patch, passed, "erase-star", store).version
    promote("erase-star", v1, store=store)
    client = store.client()
    assert str(client.get_model_version_by_alias("erase-star", "champion").version) == v1
    assert str(client.get_model_version_by_alias("erase-star", "candidate").version) == v2
    listed = describe("erase-star", store)
    assert [v["aliases"] for v in listed] == [["champion"], ["candidate"]]
    base, file = resolve_model_uri("models:/erase-star@champion", store, tmp_path / "dl")
    assert base is None and file.name == "star.safetensors" and file.read_bytes() == patch.read_bytes()
    assert resolve_model_uri(f"models:/erase-star/{v2}", store, tmp_path / "dl2")[1].is_file()
    with pytest.raises(EditflowError, match="no version 9"):
        promote("erase-star", 9, store=store)
    with pytest.raises(EditflowError, match="no version or alias 'gone'"):
        resolve_model_uri("models:/erase-star@gone", store)
    with pytest.raises(EditflowError, match="no gate report"):
        register_patch(patch, passed.parent / "missing", "x", store)  # no report -> refused
    assert _versions(store, "x") == []


def test_registry_cli_and_generate_from_a_registered_model(evaluated, tmp_path, monkeypatch):
    patch, passed, failed = evaluated
    monkeypatch.setenv("EDITFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cli = load_extensions(app)
    res = runner.invoke(cli, ["registry", "add", "--patch", str(patch), "--report", str(passed), "--name", "e"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["version"] == "1"
    res = runner.invoke(cli, ["registry", "add", "--patch", str(patch), "--report", str(failed), "--name", "e"])
    assert res.exit_code == 3 and json.loads(res.stdout)["version"] is None
    assert runner.invoke(cli, ["registry", "promote", "e", "1"]).exit_code == 0
    shown = json.loads(runner.invoke(cli, ["registry", "show", "e"]).stdout)
    assert shown[0]["aliases"] == ["candidate", "champion"]
    assert json.loads(runner.invoke(cli, ["registry", "list"]).stdout)[0]["name"] == "e"
    res = runner.invoke(cli, ["registry", "promote", "e", "5"])
    assert res.exit_code == 1 and "no version 5" in res.stderr
    out = tmp_path / "g.png"
    res = runner.invoke(cli, ["generate", "--model", "models:/e@champion", "--prompt", "a star", "--n", "2",
                              "--steps", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    assert (tmp_path / "home" / "mlflow.db").is_file()


def test_an_ungated_patch_is_also_logged_as_a_diffusers_lora(store, tmp_path):
    """UCE patches are exact LoRAs: the version also carries an mlflow.diffusers model that loads
    the same base and generates what the patch does."""
    import mlflow.diffusers
    from PIL import Image  # noqa: F401  (images come back as PIL)

    from editflow.edits import Patch
    from editflow.models.pipeline import GenerationConfig, generate, load_pipeline

    patch = tmp_path / "uce.safetensors"
    assert runner.invoke(app, ["erase", "--concept", "star", "--method", "uce", "--patch-only", "--no-check", "--out",
                               str(patch)]).exit_code == 0
    (tmp_path / "lenient.yaml").write_text("default: {specificity: {min: 0.5}}\n")
    res = runner.invoke(app, ["eval", "--patch", str(patch), "--gates", str(tmp_path / "lenient.yaml"),
                              "--out", str(tmp_path / "r"), *FAST])
    assert res.exit_code == 0, res.output
    reg = register_patch(patch, tmp_path / "r", "uce-star", store)
    uri = store.client().get_model_version("uce-star", reg.version).tags["editflow.lora_model_uri"]
    with _using(store):
        lora_pipe = mlflow.diffusers.load_model(uri).load_pipeline(local_files_only=True)
    lora_pipe.set_progress_bar_config(disable=True)
    config = GenerationConfig(steps=6)
    via_lora = generate(lora_pipe, ["a red star"], [5], config)[0]
    pipe = load_pipeline()
    with Patch.load(patch).apply(pipe, mode="merge"):
        via_patch = generate(pipe, ["a red star"], [5], config)[0]
    diff = np.abs(np.asarray(via_lora, np.int16) - np.asarray(via_patch, np.int16))
    assert diff.max() <= 3  # same edit, float tolerance
