"""`editflow eval`: gates on the embedded model end to end, the real-model path, and its one-line errors."""

import json
import os
from collections import Counter

import pytest
from typer.testing import CliRunner

from editflow.cli import app
from tests.tiny import tiny_sd_pipeline

runner = CliRunner()
FAST = ["--images", "6", "--steps", "12", "--attack-steps", "10", "--attack-restarts", "1"]


@pytest.fixture(scope="module")
def star_patch(tmp_path_factory):
    path = tmp_path_factory.mktemp("patch") / "star.safetensors"
    res = runner.invoke(app, ["erase", "--concept", "star", "--method", "ace", "--patch-only", "--no-check",
                              "--out", str(path)])
    assert res.exit_code == 0, res.output
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, world):
    d = tmp_path_factory.mktemp("tiny")
    tiny_sd_pipeline(d, world).save_pretrained(d / "pipe")
    return d / "pipe"


def test_eval_passes_an_ace_erasure_and_writes_the_report(star_patch, tmp_path):
    out = tmp_path / "report"
    res = runner.invoke(app, ["eval", "--patch", str(star_patch), "--out", str(out), "--json", *FAST])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    m = report["metrics"]
    assert report["passed"] and m["erasure_rate"] <= 0.05 < m["erasure_rate_original"]
    assert m["specificity_neighbours"] >= 0.9
    # the inversion attack ran against the patch: a rate over the target prompts, and FMN's M-Score
    n_targets = sum(p["role"] == "target" for p in report["prompts"])
    assert m["attack_success"] * n_targets == pytest.approx(round(m["attack_success"] * n_targets))
    assert 0 < m["memorization_score"] < 1.5 and "attack_success" not in report["absent"]
    # ... read against the untrained token's rate (same templates and seeds)
    assert m["attack_baseline"] == report["attacks"][0]["baseline"]
    assert m["attack_baseline"] * n_targets == pytest.approx(round(m["attack_baseline"] * n_targets))
    assert [a["concept"] for a in report["attacks"]] == ["star"] and len(report["attacks"][0]["tries"]) == 1
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "grid-target.png", "grid-neighbour.png",
                                               "grid-attack.png"}
    md = (out / "report.md").read_text()
    assert "PASSED" in md and "| erasure_rate |" in md and "grid-target.png" in md and "inversion attack" in md


def test_eval_without_the_attack_says_why_its_metrics_are_absent(star_patch, tmp_path):
    res = runner.invoke(app, ["eval", "--patch", str(star_patch), "--out", str(tmp_path / "r"), "--json",
                              "--no-attack", "--preserve-images", "3", *FAST])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    kept = Counter(p["concept"] for p in report["prompts"] if p["role"] in ("neighbour", "distant"))
    assert len(kept) == 15 and set(kept.values()) == {3}  # 11 other objects, 2 x 2 distant concepts; FAST alone: 2
    assert report["metrics"]["attack_success"] is None and report["metrics"]["memorization_score"] is None
    assert "--no-attack" in report["absent"]["attack_success"] and report["attacks"] == []
    assert report["metrics"]["attack_baseline"] is None and "--no-attack" in report["absent"]["attack_baseline"]


def test_eval_of_the_unpatched_model_fails_erasure_but_not_specificity(tmp_path):
    out = tmp_path / "base"
    res = runner.invoke(app, ["eval", "--concept", "star", "--out", str(out), *FAST])
    assert res.exit_code == 3, res.output
    report = json.loads((out / "report.json").read_text())
    checks = {c["metric"]: c for c in report["gates"]["checks"]}
    # the shipped model draws "a star" 5 times in 6 (docs/embedded-model.md): far above any erasure bound
    assert not checks["erasure_rate"]["passed"] and checks["erasure_rate"]["value"] >= 0.75
    assert checks["specificity_neighbours"]["passed"] and report["metrics"]["specificity"] == 1.0
    assert report["seconds"]["images_generated"] == len(report["prompts"])  # no second pass without a patch


def test_a_second_eval_on_the_same_base_reuses_the_original_images(star_patch, tmp_path):
    args = ["eval", "--patch", str(star_patch), "--cache-dir", str(tmp_path / "cache"), "--json", *FAST]
    first = json.loads(runner.invoke(app, [*args, "--out", str(tmp_path / "a")]).stdout)
    second = json.loads(runner.invoke(app, [*args, "--out", str(tmp_path / "b")]).stdout)
    assert not first["seconds"]["original_cached"] and second["seconds"]["original_cached"]
    assert first["metrics"] == second["metrics"]
    assert second["seconds"]["images_generated"] == len(second["prompts"])


def test_eval_on_a_real_model_path(tiny_dir, tmp_path, world):
    from editflow.models.pipeline import embedded_dir

    patch = tmp_path / "p.safetensors"
    res = runner.invoke(app, ["erase", "--concept", "star", "--preserve", "circle", "--model", str(tiny_dir),
                              "--patch-only", "--out", str(patch)])
    assert res.exit_code == 0, res.output
    (tmp_path / "t.txt").write_text("a star\na red star\na star on a grey background\n")
    (tmp_path / "k.csv").write_text("prompt,concept\na circle,circle\na red circle,circle\n")
    (tmp_path / "l.csv").write_text("prompt,kind\na strr,misspelling\n")
    out = tmp_path / "r"
    res = runner.invoke(app, ["eval", "--patch", str(patch), "--model", str(tiny_dir), "--prompts",
                              str(tmp_path / "t.txt"), "--preserve-prompts", str(tmp_path / "k.csv"),
                              "--leakage-prompts", str(tmp_path / "l.csv"),
                              "--evaluator", str(embedded_dir() / "evaluator"), "--out", str(out), "--steps", "2"])
    assert res.exit_code in (0, 3), res.output
    report = json.loads((out / "report.json").read_text())
    assert report["detector"] == "open-clip-zero-shot" and report["family"] == "object"
    assert [p["role"] for p in report["prompts"]] == ["target"] * 3 + ["leakage"] + ["neighbour"] * 2
    assert report["metrics"]["leakage_misspelling"] is not None
    assert report["sampler"] == {"steps": 2, "guidance": 7.5}  # the pipeline's own guidance
    assert report["metrics"]["fid_preserved"] is not None


@pytest.mark.parametrize("case", ["missing-patch", "other-base", "empty-prompts", "unknown-concept",
                                  "no-evaluator", "bad-gates"])
def test_eval_errors_are_one_line_and_write_nothing(case, tmp_path, tiny_dir, star_patch, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "bad.yaml").write_text("default: {erasure: {max: 1}}\n")
    args, message = {
        "missing-patch": (["--patch", "nope.safetensors"], "patch not found"),
        "other-base": (["--patch", str(star_patch), "--model", str(tiny_dir), "--evaluator",
                        str(tmp_path)], "patch was made for base"),
        "empty-prompts": (["--concept", "star", "--model", str(tiny_dir), "--prompts", "empty.txt",
                           "--evaluator", "ViT-B-32:" + str(tmp_path / "none.bin")], None),
        "unknown-concept": (["--concept", "unicorn"], "unknown concept 'unicorn'"),
        "no-evaluator": (["--concept", "star", "--model", str(tiny_dir)], "needs a judge"),
        "bad-gates": (["--concept", "star", "--gates", "bad.yaml"], "unknown metric 'erasure'"),
    }[case]
    if case == "other-base":  # the evaluator is checked after the base: give a real one
        from editflow.models.pipeline import embedded_dir

        args[-1] = str(embedded_dir() / "evaluator")
    if case == "empty-prompts":
        from editflow.models.pipeline import embedded_dir

        args = args[:-2] + ["--evaluator", str(embedded_dir() / "evaluator")]
        message = "no prompts in the file"
    before = set(os.listdir(tmp_path))
    res = runner.invoke(app, ["eval", *args, "--out", str(tmp_path / "report")])
    assert res.exit_code == 1, res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert set(os.listdir(tmp_path)) == before  # no report, no stray stage folder
