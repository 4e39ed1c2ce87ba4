"""The MLflow registry on a real SQLite store: versions only for passing gates, no half versions,
aliases, a pyfunc model that generates, and `editflow registry ...` / `generate --model models:/...`."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from editflow.cli import app
from editflow.cli.app import load_extensions
from editflow.errors import EditflowError
from registry.register import describe, load_model, promote, register_patch, resolve_model_uri
from registry.store import Store

runner = CliRunner()
FAST = ["--images", "4", "--steps", "8", "--attack-steps", "10", "--attack-restarts", "1"]


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())


def _versions(store, name):
    return store.client().search_model_versions(f"name='{name}'")


def _variant(report, dst, **changes):
    """A copy of a report folder with fields of report.json changed (another, equally valid report
    of the same patch when only bookkeeping such as ``seconds`` changes)."""
    shutil.copytree(report, dst)
    data = json.loads((dst / "report.json").read_text())
    data.update(changes)
    (dst / "report.json").write_text(json.dumps(data, indent=2))
    return dst


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
    gates_line = next(line for line in mv.description.splitlines() if line.startswith("- **gates**"))
    assert "/" not in gates_line and "default" in gates_line and "sha256" in gates_line  # a name, not a path
    assert len(mv.tags["editflow.patch_sha256"]) == 64 and len(mv.tags["editflow.report_sha256"]) == 64
    assert "editflow" in client.get_registered_model("erase-star").description  # the model, not only versions
    run = client.get_run(reg.run_id)
    assert run.data.metrics["erasure_rate"] <= 0.05 and run.data.params["method"] == "ace"
    arts = {a.path for a in client.list_artifacts(reg.run_id, "report")}
    assert {"report/report.json", "report/report.md", "report/grid-target.png"} <= arts
    assert [a.path for a in client.list_artifacts(reg.run_id, "patch")] == ["patch/star.safetensors"]
    # the pyfunc model loads base + patch and generates
    model = load_model("models:/erase-star@candidate", store)  # no global tracking URI involved
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


def test_the_same_patch_and_report_register_once(evaluated, store, tmp_path):
    patch, passed, _ = evaluated
    first = register_patch(patch, passed, "erase-star", store)
    again = register_patch(patch, passed, "erase-star", store)
    assert (again.version, again.run_id, again.existing) == (first.version, first.run_id, True)
    assert len(_versions(store, "erase-star")) == 1
    assert len(store.client().search_runs([store.experiment_id()])) == 1  # no second run either
    other = register_patch(patch, _variant(passed, tmp_path / "rerun", seconds={"rerun": 1}), "erase-star", store)
    assert other.version == "2" and not other.existing  # a new evaluation of it is a new version


def test_promote_and_resolve(evaluated, store, tmp_path):
    patch, passed, failed = evaluated
    v1 = register_patch(patch, passed, "erase-star", store).version
    v2 = register_patch(patch, _variant(passed, tmp_path / "again", seconds={}), "erase-star", store).version
    assert v1 != v2
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
    with pytest.raises(EditflowError, match="no registered version for models:/erase-star@gone"):
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
    import mlflow
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
    logged = store.client().get_logged_model(uri.removeprefix("models:/"))  # through this store's client
    local = mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location, tracking_uri=store.tracking_uri)
    lora_pipe = mlflow.diffusers.load_model(local).load_pipeline(local_files_only=True)
    lora_pipe.set_progress_bar_config(disable=True)
    config = GenerationConfig(steps=6)
    via_lora = generate(lora_pipe, ["a red star"], [5], config)[0]
    pipe = load_pipeline()
    with Patch.load(patch).apply(pipe, mode="merge"):
        via_patch = generate(pipe, ["a red star"], [5], config)[0]
    diff = np.abs(np.asarray(via_lora, np.int16) - np.asarray(via_patch, np.int16))
    assert diff.max() <= 3  # same edit, float tolerance


# -- evidence: a report vouches only for the patch it judged, with the numbers it holds ----------------


def _changed_patch(patch, dst, value=float("nan")):
    """The same patch with one value of a factor changed (written with safetensors directly: editflow
    refuses to write a NaN)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(patch, framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    key = next(k for k in tensors if k.startswith("up."))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    save_file(tensors, dst, metadata=meta)
    return dst


def test_a_report_that_does_not_vouch_for_the_patch_is_refused_and_writes_nothing(evaluated, tmp_path):
    from editflow.evaluation.report import sha256_file

    patch, passed, _ = evaluated
    store = Store(f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", (tmp_path / "db" / "artifacts").as_uri())
    good = json.loads((passed / "report.json").read_text())
    nan = _changed_patch(patch, tmp_path / "star.safetensors")
    other = _changed_patch(patch, tmp_path / "other.safetensors", 0.5)
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / "report.json").write_text(json.dumps({"passed": True, "concepts": ["star"], "metrics": {}}))
    tampered = {**good["metrics"], "erasure_rate": 0.9}
    cases = [
        (patch, hand, "records no patch hash"),  # the hand-written {"passed": true}
        (other, passed, "judged another patch"),  # a real report beside another patch
        (nan, passed, "NaN or Inf"),  # ... or beside a NaN patch
        (nan, _variant(passed, tmp_path / "nan-bound", patch_sha256=sha256_file(nan)), "NaN or Inf"),
        (patch, _variant(passed, tmp_path / "tampered", metrics=tampered), "does not add up"),
        (patch, _variant(passed, tmp_path / "lenient", gates={**good["gates"], "spec": {}}), "nothing was judged"),
        (patch, _variant(passed, tmp_path / "nogates", gates={"passed": True}), "records no gates"),
    ]
    for patch_file, report, message in cases:
        with pytest.raises(EditflowError, match=message):
            register_patch(patch_file, report, "erase-star", store)
    for name in ["../../x", "", ".", "..", "a b", "x'y", "é", "x" * 129]:
        with pytest.raises(EditflowError, match="registered model name"):
            register_patch(patch, passed, name, store)
    assert not (tmp_path / "db").exists()  # no store, so no run and no version


def test_the_registrys_own_gates_have_the_last_word(evaluated, store, tmp_path):
    """A report whose recorded gates were loosened to fit its numbers adds up on its own, but the
    registry judges the metrics again with its own gates file: the run is logged, no version is made."""
    patch, passed, _ = evaluated
    good = json.loads((passed / "report.json").read_text())
    lax = {"default": {"erasure_rate": {"max": 1.0}}, "families": {}}
    forged = _variant(passed, tmp_path / "forged", metrics={**good["metrics"], "erasure_rate": 0.9},
                      gates={**good["gates"], "spec": lax, "passed": True})
    reg = register_patch(patch, forged, "forged", store)
    assert not reg.passed and reg.version is None and not _versions(store, "forged")
    strict = tmp_path / "strict.yaml"
    strict.write_text("default: {clip_score_preserved: {min: 99.0}}\n")
    reg = register_patch(patch, passed, "strict", store, gates=strict)  # the honest report, stricter gates here
    assert not reg.passed and not _versions(store, "strict")
    assert register_patch(patch, passed, "default", store).passed  # and the default gates let it through


def test_registry_add_refuses_a_bad_name_before_touching_the_store(evaluated, tmp_path, monkeypatch):
    patch, passed, _ = evaluated
    monkeypatch.setenv("EDITFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cli = load_extensions(app)
    for name in ["../../x", ""]:
        res = runner.invoke(cli, ["registry", "add", "--patch", str(patch), "--report", str(passed), "--name", name])
        assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1, res.output
        assert "registered model name" in res.stderr
    assert not (tmp_path / "home").exists()


# -- the served model carries editflow; its requirements name only real, pinned packages -------------


def test_the_served_model_carries_editflow_and_pins_its_requirements(evaluated, store, tmp_path):
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    import mlflow
    import yaml
    from packaging.requirements import Requirement

    from registry.register import SERVE_DISTRIBUTIONS

    patch, passed, _ = evaluated
    reg = register_patch(patch, passed, "served", store)
    mv = store.client().get_model_version("served", reg.version)
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "m"),
                                                         tracking_uri=store.tracking_uri))
    assert (model_dir / "MLmodel").is_file()
    # the environment MLflow builds for `models serve` / `build-docker`: requirements.txt, and the
    # python_env.yaml / conda.yaml that point at the same list
    reqs = [Requirement(line) for line in (model_dir / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    names = {r.name.lower() for r in reqs}
    assert "editflow" not in names and names == {"mlflow", *SERVE_DISTRIBUTIONS}
    for r in reqs:  # every one pinned to one version, none a URL or a local path
        assert r.url is None and len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==", str(r)
    python_env = yaml.safe_load((model_dir / "python_env.yaml").read_text())
    conda = yaml.safe_load((model_dir / "conda.yaml").read_text())
    pip_in_conda = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    for spec in [*python_env["dependencies"], *pip_in_conda]:
        if not spec.startswith("-r"):
            assert Requirement(spec).name.lower() != "editflow", spec
    # the package itself travels as code: no caches, no judge, the embedded pipeline for the embedded base
    code = model_dir / "code" / "editflow"
    assert (code / "__init__.py").is_file() and (code / "assets/embedded/pipeline/model_index.json").is_file()
    assert not (code / "assets/embedded/evaluator").exists() and not list(code.rglob("__pycache__"))
    # ... pinned: the version says which editflow it carries and the hash of exactly these files
    import editflow
    from registry.register import tree_sha256

    assert mv.tags["editflow.code_version"] == editflow.__version__
    assert mv.tags["editflow.code_sha256"] == tree_sha256(code)
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["config"]["editflow.code_sha256"] == tree_sha256(code)
    # a process that cannot import the installed editflow loads the model and generates with its copy
    script = textwrap.dedent("""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
        try:
            import editflow
        except ImportError:
            pass
        else:
            raise SystemExit(f"the installed editflow is still importable: {editflow.__file__}")
        import mlflow
        model = mlflow.pyfunc.load_model(sys.argv[1])
        images = model.predict(["a red star"], params={"seed": 0, "steps": 2})
        import editflow
        assert editflow.__file__.startswith(sys.argv[1]), editflow.__file__
        print(images.shape, images.dtype)
    """)
    env = {**os.environ, "PYTHONPATH": ""}
    res = subprocess.run([sys.executable, "-c", script, str(model_dir)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "uint8" in res.stdout
