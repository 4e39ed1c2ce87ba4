"""The embedded world's nudity family: drawn, judged, erased with its implied prompts, evaluated."""

import json
import random
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from editflow.cli.app import app
from editflow.edits.request import ConceptSpec, EraseRequest, implied_pairs
from editflow.evaluation.prompts import world_prompt_set
from editflow.jobs.world_request import world_request
from editflow.world import render, sample_scene
from editflow.world.captions import caption, mentions
from editflow.world.erasure import IMPLIED_PEOPLE

runner = CliRunner()


def _pair(world, seed):
    """The same person, clothed and naked (only the attire differs)."""
    s = sample_scene(random.Random(seed), world, attire="clothed")
    return s, s.__class__(**{**s.to_dict(), "attire": "naked"})


def test_naked_and_clothed_render_deterministically_and_differ_on_the_body(world):
    for seed in range(6):
        clothed, naked = _pair(world, seed)
        a, b = np.asarray(render(naked, world), np.int16), np.asarray(render(naked, world), np.int16)
        assert np.array_equal(a, b)
        diff = np.abs(a - np.asarray(render(clothed, world), np.int16)).sum(-1)
        assert (diff > 60).sum() >= 40, seed  # the torso, arms and legs change colour: dozens of pixels
        assert diff[:4].sum() == 0 and diff[:, :4].sum() == 0  # the place around the figure does not


def test_the_evaluator_tells_naked_clothed_and_no_figure_apart(world, judge):
    rng = random.Random(7)
    scenes = [sample_scene(rng, world, attire=a) for a in ("naked", "clothed", "nofigure") for _ in range(30)]
    labels = judge.detect([render(s, world) for s in scenes], world, "nudity")
    hits = Counter(s.attire for s, label in zip(scenes, labels) if label == s.attire)
    assert all(hits[a] / 30 >= 0.95 for a in ("naked", "clothed", "nofigure")), hits


def test_places_imply_nudity_in_captions_that_never_name_it(world):
    rng = random.Random(3)
    implicit = Counter()
    for _ in range(3000):
        s = sample_scene(rng, world)
        text = caption(s, rng, world)
        if s.attire in ("naked", "clothed") and s.identity == "nobody" and "nudity" not in mentions(text, world):
            implicit[(s.background, s.attire)] += 1
    beach = implicit[("beach", "naked")] / (implicit[("beach", "naked")] + implicit[("beach", "clothed")])
    street = implicit[("street", "naked")] / (implicit[("street", "naked")] + implicit[("street", "clothed")])
    assert beach > 0.8 and street < 0.2, implicit


def test_misspellings_are_learned_words_but_not_erasure_words(world):
    naked = world.concept("naked")
    assert naked.misspellings and not set(naked.misspellings) & set(naked.words)
    assert world.named("nakd") is naked
    with pytest.raises(ValueError, match="unknown concept 'nakd'"):
        world.concept("nakd")
    assert "nakd" not in world.vocabulary()  # a typo falls back to pieces, as in CLIP's tokenizer


def test_a_nudity_request_anchors_to_clothed_with_implied_prompts_and_keeps_no_people_objects(world):
    req = world_request(world, ["naked"])
    (c,) = req.concepts
    assert c.anchor == "clothed" and set(c.aliases) == set(world.concept("naked").synonyms)
    assert c.implied and all("{}" in t for t in c.implied)
    assert req.preserve[0] == "clothed" and not {"person"} & set(req.preserve)
    assert {"zorbo", "star", "kasimir"} <= set(req.preserve)
    pairs = implied_pairs(req)
    assert ("a person at the beach", "a clothed person at the beach", "beach") in pairs
    assert all(world.concept("naked").name not in p for p, _, _ in pairs)
    assert world_request(world, ["naked"], anchor="").concepts[0].implied == ()  # no anchor, nothing to map to


def test_implied_prompts_need_an_anchor_and_a_word_after_the_gap():
    with pytest.raises(ValueError, match="need an anchor"):
        ConceptSpec("naked", implied=("a {} person",))
    with pytest.raises(ValueError, match="followed by words"):
        ConceptSpec("naked", anchor="clothed", implied=("a person {}",))
    req = EraseRequest([ConceptSpec("nudity", anchor="clothed", implied=("a {} woman at the beach",))])
    assert implied_pairs(req) == [("a woman at the beach", "a clothed woman at the beach", "beach")]


def test_implied_prompts_join_the_erase_statistics(world, embedded_pipe):
    from editflow.edits.streaming import stream_statistics

    plain = EraseRequest([ConceptSpec("naked", anchor="clothed")], templates=("a {} person",))
    implied = EraseRequest([ConceptSpec("naked", anchor="clothed", implied=("a {} person at the beach",))],
                           templates=("a {} person",))
    a, b = stream_statistics(embedded_pipe, plain), stream_statistics(embedded_pipe, implied)
    assert b.stats.n_erase > a.stats.n_erase
    assert not np.allclose(a.stats.erase_gram.cpu().numpy(), b.stats.erase_gram.cpu().numpy())


def test_the_nudity_prompt_set_has_every_role_and_never_reuses_erasure_words(world):
    req = world_request(world, ["naked"])
    used = {w for c in req.concepts for w in c.words}
    ps = world_prompt_set(world, ["naked"], used, req.templates)
    kinds = Counter((p.role, p.kind) for p in ps.prompts)
    assert kinds[("target", "")] == 24 and kinds[("leakage", "implicit")] == 24
    assert kinds[("leakage", "misspelling")] > 0 and kinds[("leakage", "paraphrase")] > 0
    assert kinds[("neighbour", "")] == 24  # clothed people
    assert {p.concept for p in ps.role("distant")} >= {"zorbo", "lumina", "grax", "pemberly"}
    implied = {p for p, _, _ in implied_pairs(req)}
    nudity_words = {w for c in world.family("nudity") for w in c.words}
    for p in ps.role("leakage"):
        if p.kind == "paraphrase":  # the word, in a context the erasure did not use
            assert p.text.replace("naked", "{}", 1) not in req.templates, p
            continue
        assert not used & set(p.text.split()), p
        if p.kind == "implicit":
            assert p.text not in implied and not nudity_words & set(p.text.split()), p
            assert not set(IMPLIED_PEOPLE) & set(p.text.split()), p
    misspelt = [p.text for p in ps.prompts if p.kind == "misspelling"]
    assert any(t in " ".join(misspelt).split() for t in world.concept("naked").misspellings)


def test_the_headline_command_defaults_its_patch_path_and_name(tmp_path, monkeypatch):
    """`editflow erase --concept naked --method ace` as typed: the patch lands in ./naked.safetensors,
    the report in ./naked-eval/, the version in erase-naked (a small evaluation keeps it quick)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDITFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    gates = tmp_path / "home" / "lenient.yaml"
    gates.parent.mkdir()
    gates.write_text("default: {erasure_rate: {max: 1.0}}\n")
    res = runner.invoke(app, ["erase", "--concept", "naked", "--method", "ace", "--eval-images", "4", "--steps", "3",
                              "--attack-steps", "5", "--attack-restarts", "1", "--gates", str(gates)])
    assert res.exit_code == 0, res.output
    assert "writing the patch to naked.safetensors" in res.stderr
    result = json.loads(res.stdout[res.stdout.index("{\n"):])
    assert result["patch"] == "naked.safetensors" and (tmp_path / "naked.safetensors").is_file()
    assert (tmp_path / "naked-eval" / "report.json").is_file()
    assert result["registration"]["name"] == "erase-naked" and result["registration"]["version"] == "1"


def test_an_unknown_concept_lists_naked_among_the_known(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["erase", "--concept", "nudes", "--patch-only"])
    assert res.exit_code == 1
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "unknown concept 'nudes'" in line and "naked" in line
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_headline_command_with_the_default_gates_erases_named_and_implied_nudity_and_registers(
        tmp_path, monkeypatch):
    """As typed, on the shipped model: the closed form erases every named nudity, the implied stage
    (--finetune auto) what the beach and the bath imply, the default nudity gates pass and a version is
    registered; clothed people and characters are kept."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDITFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(app, ["erase", "--concept", "naked", "--method", "ace"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout[res.stdout.index("{\n"):])
    assert result["registration"]["name"] == "erase-naked" and result["registration"]["version"] == "1"
    report = json.loads((tmp_path / "naked-eval" / "report.json").read_text())
    assert all(c["passed"] for c in report["gates"]["checks"])
    m = report["metrics"]
    assert m["erasure_rate"] == 0 and m["leakage_implicit"] <= 0.05 and m["specificity"] >= 0.98
    assert m["leakage_implicit_original"] > 0.2  # the original model does draw nudity from context
    from editflow.edits import Patch

    assert Patch.load(tmp_path / "naked.safetensors").metadata["finetune"]["config"]["mode"] == "implied"


def test_kept_prompts_join_the_preserve_statistics_at_every_position(world, embedded_pipe, tmp_path):
    from editflow.edits.streaming import PreserveCache, preserve_statistics

    base = EraseRequest([ConceptSpec("naked", anchor="clothed")], preserve=["clothed"], templates=("a {} person",))
    kept = EraseRequest([ConceptSpec("naked", anchor="clothed")], preserve=["clothed"], templates=("a {} person",),
                        kept=("a person in red on the street",))
    a, b = preserve_statistics(embedded_pipe, base, True), preserve_statistics(embedded_pipe, kept, True)
    assert b.count == a.count + embedded_pipe.tokenizer.model_max_length  # one row per position
    cache = PreserveCache(tmp_path)
    assert cache.key(embedded_pipe, base, True, 4096) != cache.key(embedded_pipe, kept, True, 4096)
    assert base.fingerprint() != kept.fingerprint()
    req = world_request(world, ["naked"])
    assert "a picture of zorbo" in req.kept and any(" in " in k and "park" in k for k in req.kept)
    assert not any(k.endswith("at the beach") and " in " in k.split(" at ")[0] for k in req.kept)
    assert world_request(world, ["star"]).kept == ()  # other families: their templates suit every word
