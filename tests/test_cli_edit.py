"""`editflow erase / apply / export` on a tiny saved pipeline, and their one-line errors."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from editflow.cli import app
from tests.tiny import tiny_sd_pipeline

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, world):
    d = tmp_path_factory.mktemp("tiny")
    tiny_sd_pipeline(d, world).save_pretrained(d / "pipe")
    return d / "pipe"


@pytest.mark.parametrize("method", ["ace", "uce"])
def test_erase_apply_export(model_dir, tmp_path, method):
    patch = tmp_path / "p.safetensors"
    res = runner.invoke(app, ["erase", "--concept", "star", "--alias", "pentagram", "--preserve", "circle",
                              "--method", method, "--model", str(model_dir), "--patch-only", "--out", str(patch),
                              "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rank"] > 0 and summary["gated"] == (method == "ace") and patch.is_file()
    assert len(list((tmp_path / "cache").glob("preserve-*.safetensors"))) == 1
    grid = tmp_path / "g.png"
    res = runner.invoke(app, ["apply", "--patch", str(patch), "--prompt", "a star", "--n", "2",
                              "--model", str(model_dir), "--out", str(grid)])
    assert res.exit_code == 0, res.output
    assert Image.open(grid).size[1] == 2 * Image.open(grid).size[0] // 2
    res = runner.invoke(app, ["export", "--patch", str(patch), "--out", str(tmp_path / "lora")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["erase", "--method", "uce", "--out", "p.safetensors"], "name at least one concept"),
    (["erase", "--concept", "unicorn", "--out", "p.safetensors", "--no-check"], "unknown concept 'unicorn'"),
    (["erase", "--concept", "star", "--preserve", "star", "--out", "p.safetensors"], "both erased and preserved"),
    (["apply", "--patch", "missing.safetensors", "--prompt", "a star", "--out", "g.png"], "patch not found"),
    (["export", "--patch", "missing.safetensors", "--out", "lora"], "patch not found"),
    (["erase", "--concept", "star", "--concept", "moon", "--alias", "x", "--out", "p.safetensors"],
     "--alias names one concept"),
])
def test_erase_errors_are_one_line_and_write_nothing(args, message, tmp_path, monkeypatch, model_dir):
    monkeypatch.chdir(tmp_path)
    if "--concept" in args and "unicorn" not in args:
        args = [*args, "--model", str(model_dir), "--patch-only"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_unknown_method_is_usage_error(tmp_path):
    res = runner.invoke(app, ["erase", "--concept", "star", "--method", "esd", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2
    assert "ace" in res.output and "uce" in res.output


def test_cli_choices_match_the_core_enums():
    """The CLI keeps its own enums (so --help does not import torch); they must not drift."""
    from editflow.cli.edit import Finetune, MethodName, Policy, Target
    from editflow.edits import available
    from editflow.edits.ace import NeutralTarget
    from editflow.edits.conditioning import TokenPolicy
    from editflow.finetune import FinetuneMode

    assert sorted(m.value for m in MethodName) == available()
    assert [f.value for f in Finetune] == [f.value for f in FinetuneMode]
    assert [p.value for p in Policy] == [p.value for p in TokenPolicy]
    assert [t.value for t in Target] == [t.value for t in NeutralTarget]


def test_world_request_takes_aliases(world):
    from editflow.jobs.world_request import world_request

    req = world_request(world, ["star"], aliases=("asterisk",))
    assert req.concepts[0].words == ("star", "pentagram", "asterisk")
    with pytest.raises(ValueError, match="exactly one concept"):
        world_request(world, ["star", "moon"], aliases=("x",))


def test_default_preserve_covers_neighbours_then_other_families(world):
    from editflow.jobs.world_request import world_request
    from editflow.world.erasure import default_preserve

    keep = default_preserve(world, ["zorbo"])
    assert set(keep[:3]) == {"lumina", "grax", "pemberly"}  # neighbours first
    assert {"square", "heart", "kasimir", "tamsin"} <= set(keep) and "zorbo" not in keep
    assert not any("null" in world.concept(k).tags for k in keep)
    assert world_request(world, ["zorbo"]).preserve == keep
    assert world_request(world, ["zorbo"], preserve=["lumina"]).preserve == ["lumina"]


def test_a_style_request_brings_its_neighbours_scenes_and_the_style_finetune_defaults(world):
    """A style's neighbours (the other styles) and the style itself come with described scenes that
    wear every colour in turn, and its minmax starts from the world's style settings (η 3, 16 images
    per neighbour, 5 attackers, half the word term in context); the job's own settings win; an object
    keeps FinetuneConfig's defaults."""
    from editflow.jobs.erase import EraseJob, build_request, finetune_config
    from editflow.jobs.world_request import world_request
    from editflow.world.erasure import FAMILY_FINETUNE, NEIGHBOUR_SCENES

    req = world_request(world, ["kasimir"])
    assert set(req.neighbours) == {"odalys", "brenwick", "tamsin"}
    for scenes in req.neighbours.values():
        assert len(scenes) == NEIGHBOUR_SCENES == len(set(scenes)) and all(t.count("{}") == 1 for t in scenes)
        assert all(t.split()[0] in ("a", "an") and t.endswith(" by {}") for t in scenes)  # "a red moon by {}"
        assert not any("kasimir" in t for t in scenes)  # never shows the erased style
    assert req.neighbours["odalys"] != req.neighbours["tamsin"]  # each its own scenes
    colours = [c.name for c in world.colours if "null" not in c.tags]
    for scenes in (*req.neighbours.values(), req.scenes["kasimir"]):  # every colour, evenly
        worn = [next(c for c in colours if f" {c} " in t) for t in scenes]
        assert max(map(worn.count, colours)) - min(map(worn.count, colours)) <= 1
    assert len(req.scenes["kasimir"]) == len(req.templates) == len(set(req.scenes["kasimir"]))
    assert all(t.endswith(" by {}") and "kasimir" not in t for t in req.scenes["kasimir"])
    assert world_request(world, ["kasimir"], preserve=["odalys", "star"]).neighbours.keys() == {"odalys"}

    style = finetune_config(EraseJob(["kasimir"], "ace", finetune={"mode": "minmax"}), req)
    assert (style.eta, style.neighbour_images) == (FAMILY_FINETUNE["style"]["eta"], 16) == (3.0, 16)
    assert style.scene_references and style.references == 32
    assert (style.scene_words, style.attackers) == (0.5, 5)
    own = EraseJob(["kasimir"], "ace", finetune={"mode": "minmax", "eta": 1.5})
    assert finetune_config(own, req).eta == 1.5
    assert finetune_config(EraseJob(["kasimir"], "ace", finetune={"mode": "fmn"}), req).eta == 1.0
    star = EraseJob(["star"], "ace", finetune={"mode": "minmax"})
    obj = finetune_config(star, build_request(star))
    assert (obj.eta, obj.neighbour_images, obj.scene_references) == (1.0, 0, False)
    assert (obj.scene_words, obj.attackers) == (0, 3)
    assert build_request(star).finetune_defaults == {}


def test_world_request_prompts_draw_each_concept_on_its_own(world, embedded_pipe, judge):
    """The request's per-concept prompts (what the fine-tuning draws its concept and preserved
    images from) make the embedded model draw that concept; "a {}" draws a style word plain."""
    from editflow.edits.request import ConceptSpec, EraseRequest
    from editflow.jobs.world_request import world_request
    from editflow.models.pipeline import generate

    req = world_request(world, ["star"], preserve=["kasimir", "zorbo", "red", "not-a-concept"])
    assert req.prompts == {"star": ("a {}", "{}"), "kasimir": ("a shape by {}", "{}"),
                           "zorbo": ("a picture of {}", "{}"), "red": ("a {} shape", "{}")}
    assert world_request(world, ["tamsin"]).prompts["odalys"] == ("a shape by {}", "{}")
    seeds = list(range(300, 306))

    def share(prompt: str, word: str) -> float:
        labels = judge.detect(generate(embedded_pipe, [prompt] * len(seeds), seeds), world, world.concept(word).family)
        return sum(label == word for label in labels) / len(labels)

    for word, templates in req.prompts.items():  # most of the pictures (the shipped model: "a star" 4-5 of 6)
        assert share(templates[0].format(word), word) >= 4 / 6, word
    with pytest.raises(ValueError, match="exactly one"):
        EraseRequest([ConceptSpec("star")], prompts={"star": ("a photo",)})


@pytest.mark.parametrize("args, message", [
    (["--method", "uce", "--target", "zero"], "--target is not an option of --method uce"),
    (["--method", "uce", "--no-gated"], "--gated/--no-gated is not an option of --method uce"),
    (["--method", "esd-x", "--lam", "0.3"], "--lam is not an option of --method esd-x"),
    (["--finetune", "fmn", "--rounds", "2"], "--rounds is an option of --finetune adv, not of --finetune fmn"),
])
def test_an_option_of_another_method_is_refused_not_ignored(tmp_path, args, message):
    res = runner.invoke(app, ["erase", "--concept", "star", "--patch-only", "--out", str(tmp_path / "p.safetensors"),
                              *args])
    assert res.exit_code == 1 and message in res.output and len(res.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_a_method_takes_its_own_options_given_explicitly(tmp_path):
    """ACE's own options pass the check (UCE's shared ones too); the patch is written."""
    out = tmp_path / "p.safetensors"
    res = runner.invoke(app, ["erase", "--concept", "star", "--method", "uce", "--lam", "0.4", "--patch-only",
                              "--no-check", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()
