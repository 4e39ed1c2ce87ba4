"""`editflow policy plan` refuses a bad policy file at load, with one line and before touching EDITFLOW_HOME:
names that are not registered-model names (or would leave EDITFLOW_HOME), crons the scheduler would
refuse, gate files that do not parse."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from editflow.cli import app
from editflow.cli.app import load_extensions

runner = CliRunner()
GOOD = {"name": "world-stars", "concepts": ["star"], "schedule": "0 3 * * *"}


def _plan(tmp_path, monkeypatch, policy: dict, gates: str | None = None):
    home = tmp_path / "home"
    monkeypatch.setenv("EDITFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "policies"
    folder.mkdir()
    if gates is not None:
        (folder / "gates.yaml").write_text(gates)
        policy = {**policy, "gates": "gates.yaml"}
    (folder / "policy.yaml").write_text(yaml.safe_dump(policy))
    return runner.invoke(load_extensions(app), ["policy", "plan", str(folder / "policy.yaml")]), home


@pytest.mark.parametrize("policy, gates, message", [
    ({**GOOD, "name": "../../escape"}, None, "name '../../escape' has character(s) '/'"),
    ({**GOOD, "name": "a/b"}, None, "name 'a/b' has character(s) '/'"),
    ({**GOOD, "name": "a\\b"}, None, "has character(s) '\\\\'"),
    ({**GOOD, "name": ".."}, None, "name '..' is not allowed"),
    ({**GOOD, "name": "."}, None, "name '.' is not allowed"),
    ({**GOOD, "name": "two words"}, None, "name 'two words' has character(s) ' '"),
    ({**GOOD, "name": "x" * 300}, None, "at most"),
    ({**GOOD, "name": ""}, None, "'name' (the registered model name) is required"),
    ({**GOOD, "name": 7}, None, "'name' (the registered model name) is required"),
    ({**GOOD, "schedule": "61 25 * * 9"}, None, "'schedule' '61 25 * * 9' is not a valid cron string"),
    ({**GOOD, "schedule": "every night"}, None, "is not a valid cron string"),
    ({**GOOD, "schedule": 3}, None, "'schedule' 3 is not a valid cron string"),
    (GOOD, "default: {erasure: {max: 0.1}}\n", "unknown metric 'erasure'"),
    (GOOD, "default: {erasure_rate: {min: 0.5, max: 0.1}}\n", "has min 0.5 > max 0.1"),
    (GOOD, "default: [\n", "is not valid YAML"),
    (GOOD, "just a string\n", "must hold a mapping"),
    ({**GOOD, "gates": "missing.yaml"}, None, "gates file not found"),
], ids=["escape", "slash", "backslash", "dotdot", "dot", "space", "too-long", "empty", "not-a-string", "cron-range",
        "cron-words", "cron-number", "gates-metric", "gates-bounds", "gates-yaml", "gates-not-mapping",
        "gates-missing"])
def test_plan_refuses_a_bad_policy_in_one_line_and_creates_nothing(tmp_path, monkeypatch, policy, gates, message):
    res, home = _plan(tmp_path, monkeypatch, policy, gates)
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "policy.yaml" in lines[0], res.stderr
    assert res.stdout == ""
    assert not home.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["policies", "policy.yaml"]
                                                                 + (["gates.yaml"] if gates is not None else []))


def test_plan_accepts_a_good_policy_with_its_gates(tmp_path, monkeypatch):
    res, home = _plan(tmp_path, monkeypatch, {**GOOD, "name": "Safety_v2.objects-1", "schedule": "*/15 2-4 * * 1-5"},
                      "default: {erasure_rate: {max: 0.05}}\nfamilies: {object: {specificity: {min: 0.9}}}\n")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["missing"] == ["star"]
