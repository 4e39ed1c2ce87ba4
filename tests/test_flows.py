"""The Prefect erase flow on a real (test-harness) Prefect server and a real SQLite MLflow store:
erase -> evaluate -> register, resume after a crash from the cache, and `editflow erase --register`."""

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

import flows.erase as erase_flows
from editflow.cli import app
from editflow.jobs.erase import EraseJob
from registry.store import Store

runner = CliRunner()
CHEAP_ATTACK = {"attack_steps": 10, "attack_restarts": 1}


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())


def _job(tmp_path):
    return asdict(EraseJob(["star"], "ace", cache_dir=str(tmp_path / "cache")))


def test_flow_erases_evaluates_registers_and_resumes_after_a_crash(tmp_path, store, monkeypatch):
    import registry.register

    def unreachable(*a, **k):
        raise ConnectionError("registry unreachable")

    monkeypatch.setattr(registry.register, "register_patch", unreachable)
    monkeypatch.setattr(erase_flows, "register_task", erase_flows.register_task.with_options(retries=0))
    out = str(tmp_path / "star.safetensors")
    with pytest.raises(ConnectionError):
        erase_flows.erase_flow(_job(tmp_path), out, "erase-star", images=4, tracking_uri=store.tracking_uri,
                               eval_options=CHEAP_ATTACK)
    assert (tmp_path / "star.safetensors").is_file() and (tmp_path / "star-eval" / "report.json").is_file()
    mtime = (tmp_path / "star.safetensors").stat().st_mtime_ns
    monkeypatch.undo()
    result = erase_flows.erase_flow(_job(tmp_path), out, "erase-star", images=4, tracking_uri=store.tracking_uri,
                               eval_options=CHEAP_ATTACK)
    assert result["stages"] == {"erase": "Cached", "evaluate": "Cached", "register": "Completed"}
    assert (tmp_path / "star.safetensors").stat().st_mtime_ns == mtime  # not recomputed
    assert result["passed"] and result["registration"]["version"] == "1"
    mv = store.client().get_model_version_by_alias("erase-star", "candidate")
    assert mv.tags["editflow.gate_status"] == "passed"


def test_erase_register_cli_runs_the_flow_and_exits_3_on_a_failed_gate(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "strict.yaml").write_text("default: {clip_score_preserved: {min: 99.0}}\n")
    res = runner.invoke(app, ["erase", "--concept", "star", "--register", "erase-star", "--gates",
                              str(tmp_path / "strict.yaml"), "--eval-images", "4", "--attack-steps", "10",
                              "--attack-restarts", "1", "--out",
                              str(tmp_path / "p.safetensors"), "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 3, res.output
    result = json.loads(res.stdout[res.stdout.index("{\n"):])
    assert not result["passed"] and result["registration"]["version"] is None
    store = Store.resolve()
    assert store.client().search_model_versions("name='erase-star'") == []
    run = store.client().get_run(result["registration"]["run_id"])
    assert run.data.tags["editflow.gate_status"] == "failed"


# -- safety policies ----------------------------------------------------------------------------


def _policy(tmp_path, **extra):
    import yaml

    data = {"name": "world-stars", "base": "embedded", "method": "ace", "concepts": ["star"], "eval_images": 4,
            "schedule": "0 3 * * *", "out_dir": "patches", **extra}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_policy_run_registers_a_candidate_then_does_nothing_once_the_champion_covers_it(tmp_path, store):
    from flows.policy import policy_flow
    from registry.register import promote

    path = _policy(tmp_path, eval={"preserve_images": 3})
    first = policy_flow(str(path), store.tracking_uri, str(tmp_path / "cache"))
    assert first["missing"] == ["star"] and first["result"]["registration"]["version"] == "1"
    report = json.loads((Path(first["result"]["report"]) / "report.json").read_text())
    kept = Counter(p["concept"] for p in report["prompts"] if p["role"] in ("neighbour", "distant"))
    assert set(kept.values()) == {3}  # the policy's eval settings reach the evaluation (eval_images 4 alone: 2)
    assert (tmp_path / "patches").is_dir()  # out_dir is relative to the policy file
    promote("world-stars", "1", store=store)
    second = policy_flow(str(path), store.tracking_uri, str(tmp_path / "cache"))
    assert second["champion"] == "1" and second["missing"] == [] and second["result"] is None
    assert len(store.client().search_model_versions("name='world-stars'")) == 1


def test_plan_erases_the_union_when_the_champion_misses_a_concept(tmp_path, store):
    from flows.policy import Policy, plan

    client = store.client()
    client.create_registered_model("p")
    (tmp_path / "src").mkdir()
    mv = client.create_model_version("p", str(tmp_path / "src"), tags={"editflow.concepts": "skull"})
    client.set_registered_model_alias("p", "champion", mv.version)
    policy = Policy.from_dict({"name": "p", "concepts": ["skull", {"name": "blade", "synonyms": ["sword"]}]})
    todo = plan(policy, store.tracking_uri)
    assert todo["champion"] == str(mv.version) and todo["missing"] == ["blade"]
    assert todo["erase"] == ["blade", "skull"]
    job = policy.job(todo["erase"])
    assert job.concept_aliases == {"blade": ["sword"]} and job.model is None and job.finetune == {}
    tuned = Policy.from_dict({"name": "p", "concepts": ["skull"], "finetune": {"mode": "adv", "rounds": 2}})
    assert tuned.job(["skull"]).finetune == {"mode": "adv", "rounds": 2}
    fresh = Policy.from_dict({"name": "none-yet", "concepts": ["skull"]})
    assert plan(fresh, store.tracking_uri)["missing"] == ["skull"]


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "concepts": ["star"], "shedule": "x"}, "unknown key(s) ['shedule']"),
    ({"concepts": ["star"]}, "'name'"),
    ({"name": "x", "concepts": []}, "non-empty list"),
    ({"name": "x", "concepts": ["unicorn"]}, "unknown concept 'unicorn'"),
    ({"name": "x", "concepts": ["star"], "method": "esd"}, "unknown method 'esd'"),
    ({"name": "x", "concepts": [{"synonyms": ["a"]}]}, "a concept is a word"),
    ({"name": "x", "concepts": ["star"], "finetune": "deep"}, "bad 'finetune'"),
    ({"name": "x", "concepts": ["star"], "finetune": {"mode": "adv", "rounds": -1}}, "rounds must be >= 0"),
    ({"name": "x", "concepts": ["star"], "finetune": {"mode": "minmax", "preserve_focus": 2}},
     "preserve_focus must be between 0 and 1"),
    ({"name": "x", "concepts": ["star"], "finetune": {"mode": "minmax", "lr_final": 1.5}},
     "lr_final must be between 0 and 1"),
    ({"name": "x", "concepts": ["star"], "eval": {"attack_stepz": 400}}, "'eval' takes attack, attack_restarts"),
    ({"name": "x", "concepts": ["star"], "eval": {"attack_steps": 0}}, "eval.attack_steps must be a whole number"),
    ({"name": "x", "concepts": ["star"], "eval": {"attack": "no"}}, "eval.attack must be true or false"),
    ({"name": "../../escape", "concepts": ["star"]}, "name '../../escape' has character(s) '/'"),
    ({"name": "..", "concepts": ["star"]}, "name '..' is not allowed"),
    ({"name": "x", "concepts": ["star"], "schedule": "61 25 * * 9"}, "'schedule' '61 25 .* is not a valid cron"),
    ({"name": "x", "concepts": ["star"], "gates": "no/such/gates.yaml"}, "gates file not found"),
])
def test_bad_policies_are_refused(data, message):
    from editflow.errors import EditflowError
    from flows.policy import Policy

    with pytest.raises(EditflowError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        Policy.from_dict(data)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "policies").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_policies_load(path):
    from flows.policy import Policy

    policy = Policy.load(path)
    assert policy.concepts and policy.gates and Path(policy.gates).is_file() and policy.schedule
    job = policy.job(policy.concepts)
    assert job.finetune == policy.finetune


def test_policy_deployment_and_serve_cli(tmp_path, monkeypatch):
    from flows.policy import deployment

    dep = deployment(str(_policy(tmp_path)))
    assert dep.name == "policy-world-stars" and dep.parameters["policy_path"].endswith("policy.yaml")
    assert dep.entrypoint == "flows.policy.policy_flow"  # importable from any working directory
    assert dep.schedules[0].schedule.cron == "0 3 * * *"
    from editflow.cli.app import load_extensions

    cli = load_extensions(app)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    res = runner.invoke(cli, ["policy", "serve", str(_policy(tmp_path))])
    assert res.exit_code == 1 and "needs a Prefect server" in res.stderr
    res = runner.invoke(cli, ["policy", "plan", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 1 and "policy file not found" in res.stderr
    no_schedule = _policy(tmp_path, schedule=None)
    with pytest.raises(Exception, match="no 'schedule'"):
        deployment(str(no_schedule))


def test_prefect_yaml_deployments_point_at_real_flows():
    from pathlib import Path

    import yaml
    from prefect.flows import load_flow_from_entrypoint

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        path, _, name = dep["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(f"{root / path}:{name}")
        assert flow.name == "editflow-policy"
        policy = root / dep["parameters"]["policy_path"]
        from flows.policy import Policy

        assert Policy.load(policy).schedule == dep["schedules"][0]["cron"]


# -- a real checkpoint (architecture-exact SD 1.5, shrunk, random weights) ------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_flow_on_a_real_checkpoint_judges_with_the_suite_and_registers(tmp_path, store, dtype, embedded_pipe):
    """`editflow erase --concept naked --method ace --model SD` as a flow: family knowledge, the shipped
    prompt sets, NudeNet on the nudity prompts and an open_clip judge on the rest, then a version."""
    from transformers import CLIPTokenizer

    from editflow.edits import Patch
    from editflow.models.reference import build_pipeline, save_pipeline
    from tests.tiny import tiny_judge_dir

    base = save_pipeline(build_pipeline("sd15", embedded_pipe.tokenizer, width=0.1, text_layers=2), tmp_path / "sd15")
    judge = tiny_judge_dir(tmp_path / "judge", CLIPTokenizer.from_pretrained(base / "tokenizer"))
    gates = tmp_path / "lenient.yaml"  # random weights draw noise: judge the plumbing, not the erasure
    gates.write_text("default: {erasure_rate: {max: 1.0}, image_similarity_preserved: {min: 0.0}}\n")
    kept = tmp_path / "kept.csv"  # a user's own preservation captions replace the shipped 238
    kept.write_text("prompt,concept\na dog on a sofa,dog\na man in a suit,person\na red car,car\n")
    job = asdict(EraseJob(["naked"], "ace", model=str(base), dtype=dtype, cache_dir=str(tmp_path / "cache")))
    out = tmp_path / "naked.safetensors"
    result = erase_flows.erase_flow(job, str(out), "erase-naked-sd15", gates=str(gates), images=2,
                                    tracking_uri=store.tracking_uri,
                                    eval_options={"evaluator": str(judge), "steps": 2, "preserve_prompts": str(kept),
                                                  "attack_steps": 2, "attack_restarts": 1})
    assert result["passed"] and result["registration"]["version"] == "1", result
    patch = Patch.load(out)
    (concept,) = patch.metadata["concepts"]
    assert concept["anchor"] == "fully clothed" and {"nude", "topless"} <= set(concept["aliases"])
    assert patch.metadata["base_dtype"] == dtype
    report = json.loads((tmp_path / "naked-eval" / "report.json").read_text())
    assert report["family"] == "nudity" and report["model"] == str(base)
    assert report["detector"].startswith("nudenet-3.4.2:i2p(>=0.6, 4 classes)+open-clip-zero-shot")
    assert report["sampler"] == {"steps": 2, "guidance": 7.5}  # SD 1.5's own guidance
    kinds = Counter(p["kind"] for p in report["prompts"] if p["role"] == "leakage")
    assert set(kinds) == {"synonym", "paraphrase", "misspelling", "implicit"} and max(kinds.values()) <= 2
    assert [p["concept"] for p in report["prompts"] if p["role"] == "neighbour"] == ["dog", "person", "car"]
    assert all(report["metrics"][k] is not None for k in ("erasure_rate", "leakage_implicit",
                                                          "clip_score_preserved", "attack_success"))
    mv = store.client().get_model_version("erase-naked-sd15", "1")
    assert mv.tags["editflow.gate_status"] == "passed" and mv.tags["editflow.concepts"] == "naked"
