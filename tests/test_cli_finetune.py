"""`editflow invert` and `editflow erase --finetune / --method esd-x / --images` end to end on the
embedded model (patch only), with their one-line errors."""

import json
import random

import pytest
from typer.testing import CliRunner

from editflow.cli import app
from editflow.edits import Patch
from editflow.inversion import LearnedTokens

runner = CliRunner()


@pytest.fixture(scope="module")
def star_pictures(tmp_path_factory, world):
    from editflow.world.captions import sample_scene
    from editflow.world.render import render

    d = tmp_path_factory.mktemp("pictures")
    rng = random.Random(5)
    for i in range(6):
        render(sample_scene(rng, world, object="star", identity="nobody"), world).save(d / f"{i}.png")
    return d


def _json(res):
    return json.loads(res.stdout[res.stdout.index("{"):])


def test_invert_from_a_prompt_writes_a_diffusers_embedding_and_a_preview(tmp_path):
    out, preview = tmp_path / "s.safetensors", tmp_path / "p.png"
    res = runner.invoke(app, ["invert", "--prompt", "a picture of a star", "--n", "4", "--steps", "5",
                              "--token", "<s>", "--out", str(out), "--preview", str(preview)])
    assert res.exit_code == 0, res.output
    summary = _json(res)
    tok = LearnedTokens.load(out)
    assert tok.token == "<s>" and tok.vectors.shape == (1, 128) and summary["images"] == 4
    assert tok.metadata["source"] == "prompt: a picture of a star" and preview.is_file()


@pytest.mark.parametrize("args, message", [
    (["--token", "star"], "already in the tokenizer"),
    (["--token", "<x>", "--images", "nowhere"], "image folder not found"),
    (["--token", "<x>", "--images", "nowhere", "--prompt", "a star"], "one of them"),
])
def test_invert_bad_input_is_one_line(tmp_path, args, message):
    extra = [] if "--images" in args else ["--prompt", "a star", "--n", "1", "--steps", "1"]
    res = runner.invoke(app, ["invert", "--out", str(tmp_path / "x.safetensors"), *args, *extra])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.safetensors").exists()


def test_erase_finetune_adv_writes_a_tuned_patch(tmp_path):
    out = tmp_path / "star.safetensors"
    res = runner.invoke(app, ["erase", "--concept", "star", "--finetune", "adv", "--rounds", "1", "--steps", "2",
                              "--patch-only", "--no-check", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = _json(res)
    assert summary["finetune"]["adversarial"] == 1 and set(summary["finetune"]["losses"]) >= {"resteer", "denoise"}
    patch = Patch.load(out)
    ft = patch.metadata["finetune"]
    assert ft["config"]["mode"] == "adv" and ft["adversarial"][0]["token"] == "<adv-star-0>"
    assert patch.gate is not None and patch.edit.rank == patch.metadata["rank"]


@pytest.mark.parametrize("method, rank", [("esd-x", 128), ("esd-u", 4)])
def test_erase_with_esd_trains_the_baseline(tmp_path, method, rank):
    out = tmp_path / "esd.safetensors"
    res = runner.invoke(app, ["erase", "--concept", "star", "--method", method, "--steps", "3", "--patch-only",
                              "--no-check", "--out", str(out)])
    assert res.exit_code == 0, res.output
    patch = Patch.load(out)
    assert patch.metadata["method"] == method and patch.metadata["config"]["esd_steps"] == 3
    assert patch.gate is None and patch.edit.rank == rank


def test_erase_a_concept_given_only_by_images(tmp_path, star_pictures):
    out = tmp_path / "mine.safetensors"
    res = runner.invoke(app, ["erase", "--images", str(star_pictures), "--token", "<mine>", "--patch-only",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    patch = Patch.load(out)
    assert [c["name"] for c in patch.metadata["concepts"]] == ["<mine>"]
    assert [t.token for t in patch.tokens] == ["<mine>"] and patch.metadata["learned_tokens"][0]["images"] == 6


def test_images_join_a_named_concept(tmp_path, star_pictures):
    out = tmp_path / "star.safetensors"
    res = runner.invoke(app, ["erase", "--concept", "star", "--images", str(star_pictures), "--patch-only",
                              "--no-check", "--out", str(out)])
    assert res.exit_code == 0, res.output
    words = Patch.load(out).metadata["concepts"][0]["aliases"]
    assert "<star-images>" in words and "pentagram" in words


@pytest.mark.parametrize("args, message", [
    (["--images", "nowhere", "--concept", "star", "--patch-only"], "image folder not found"),
    (["--images", "{pics}"], "needs --token"),
    (["--images", "{pics}", "--token", "<m>"], "--patch-only"),
    (["--images", "{pics}", "--token", "m", "--patch-only"], "angle brackets"),
    (["--concept", "star", "--method", "esd-u", "--finetune", "fmn", "--patch-only"], "already trained"),
])
def test_erase_bad_input_is_one_line(tmp_path, star_pictures, args, message):
    args = [a.replace("{pics}", str(star_pictures)) for a in args]
    res = runner.invoke(app, ["erase", *args, "--out", str(tmp_path / "x.safetensors")])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.safetensors").exists()


def test_erase_finetune_minmax_writes_an_ungated_patch_with_a_lora(tmp_path):
    out = tmp_path / "star.safetensors"
    res = runner.invoke(app, ["erase", "--concept", "star", "--finetune", "minmax", "--steps", "2",
                              "--patch-only", "--no-check", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = _json(res)
    assert summary["gated"] is False and set(summary["finetune"]["losses"]) >= {"attack", "adversarial", "preserve"}
    patch = Patch.load(out)
    ft = patch.metadata["finetune"]
    assert ft["config"]["mode"] == "minmax" and ft["config"]["minmax_steps"] == 2
    assert patch.gate is None and patch.edit.rank == patch.metadata["rank"] >= ft["config"]["lora_rank"]
    assert patch.metadata["config"]["gated"] is False
