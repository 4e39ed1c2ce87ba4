"""The real-model evaluation suite: family knowledge, the shipped prompt sets, the judge found in the
Hugging Face cache (or a one-line error saying how to supply one), NudeNet's two protocols."""

import csv
import json
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from editflow.cli import app
from editflow.cli.common import NudityProtocolName
from editflow.errors import EditflowError
from editflow.evaluation.detectors import NUDITY_PROTOCOLS
from editflow.evaluation.suite import PROMPT_SETS, read_rows, suite_prompt_set
from editflow.families import KNOWLEDGE, guess_family
from editflow.jobs.erase import EraseJob, build_request
from tests.tiny import tiny_sd_pipeline

runner = CliRunner()


def test_families_guess_nudity_and_give_anchors_and_words():
    assert guess_family("naked") == guess_family("NSFW") == guess_family("nude women") == "nudity"
    assert guess_family("Van Gogh") == guess_family("cat") == "object"
    req = build_request(EraseJob(["nudity"], model="some/model"))
    (c,) = req.concepts
    assert c.anchor == "fully clothed" and {"nude", "naked", "topless", "nsfw"} <= set(c.aliases)
    assert "nudity" not in c.aliases  # the concept's own word is its name, not an alias
    style = build_request(EraseJob(["Van Gogh"], model="some/model", family="style")).concepts[0]
    assert (style.anchor, style.aliases) == ("art", ())
    person = build_request(EraseJob(["Brad Pitt"], model="m", family="identity", anchor="a man")).concepts[0]
    assert person.anchor == "a man"  # the user's anchor wins
    bare = build_request(EraseJob(["naked"], model="m", synonyms=False)).concepts[0]
    assert bare.aliases == ()
    with pytest.raises(EditflowError, match="unknown family 'animal'; editflow knows nudity, style"):
        EraseJob(["cat"], model="m", family="animal").validate()
    with pytest.raises(EditflowError, match="--family is for real models"):
        EraseJob(["star"], family="object").validate()


def test_shipped_prompt_sets_cover_every_family_and_role():
    for family in KNOWLEDGE:
        rows = read_rows(PROMPT_SETS / f"{family}.csv")
        roles = Counter(r["role"] for r in rows)
        assert roles["target"] >= 24 and roles["leakage"] >= 12, family
        assert {"prompt", "evaluation_seed", "role", "kind", "concept", "categories"} <= set(rows[0])
        if family != "nudity":
            assert all("{concept}" in r["prompt"] or "{typo}" in r["prompt"] for r in rows), family
    kinds = Counter(r["kind"] for r in read_rows(PROMPT_SETS / "nudity.csv") if r["role"] == "leakage")
    assert set(kinds) == {"synonym", "paraphrase", "misspelling", "implicit"} and kinds["implicit"] >= 24
    kept = read_rows(PROMPT_SETS / "preservation.csv")
    assert len(kept) >= 200 and len({r["prompt"] for r in kept}) == len(kept)
    subjects = Counter(r["concept"] for r in kept)
    assert len(subjects) >= 20 and subjects["person"] >= 30  # clothed people: what a nudity erasure must keep


def test_suite_prompt_set_fills_concepts_drops_erased_words_and_takes_user_files(tmp_path):
    ps = suite_prompt_set(["Van Gogh"], "style", images=5, preserve_images=2)
    targets = [p for p in ps.prompts if p.role == "target"]
    assert len(targets) == 5 and all("Van Gogh" in p.text for p in targets)
    assert all(p.family == "style" for p in targets)
    typos = [p for p in ps.prompts if p.kind == "misspelling"]
    assert typos and not any("Van Gogh" in p.text for p in typos)
    kept = [p for p in ps.prompts if p.role == "neighbour"]
    assert Counter(p.concept for p in kept).most_common(1)[0][1] == 2 and {p.family for p in kept} == {"preserved"}
    assert len({(p.text, p.seed) for p in ps.prompts}) == len(ps.prompts)

    nude = suite_prompt_set(["nudity"], "nudity", images=24, used_words={"nudity", "unclothed"})
    synonyms = [p.text for p in nude.prompts if p.kind == "synonym"]
    assert synonyms and not any("unclothed" in t for t in synonyms)  # erased, so not leakage

    i2p = tmp_path / "i2p.csv"  # the real I2P file's columns
    with i2p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["prompt", "categories", "hard", "nudity_percentage", "evaluation_seed"])
        w.writeheader()
        w.writerow({"prompt": "an implicit prompt", "categories": "sexual", "hard": 1, "nudity_percentage": 60.0,
                    "evaluation_seed": 42})
    mine = suite_prompt_set(["nudity"], "nudity", images=3, prompts=str(i2p), preserve_images=1)
    assert [(p.text, p.seed) for p in mine.prompts if p.role == "target"] == [("an implicit prompt", 42)]
    with pytest.raises(EditflowError, match="unknown family 'animal'"):
        suite_prompt_set(["cat"], "animal")


def test_cli_protocol_names_are_the_detectors_protocols():
    assert {p.value for p in NudityProtocolName} == set(NUDITY_PROTOCOLS)
    assert NUDITY_PROTOCOLS["i2p"].threshold == 0.6 and len(NUDITY_PROTOCOLS["i2p"].classes) == 4
    assert NUDITY_PROTOCOLS["unlearndiffatk"].threshold == 0.45 and len(NUDITY_PROTOCOLS["unlearndiffatk"].classes) == 9


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_real_model_without_a_judge_stops_in_one_line_before_any_work(tmp_path, monkeypatch, world,
                                                                         empty_hf_cache):
    model = tiny_sd_pipeline(tmp_path, world)
    model.save_pretrained(tmp_path / "model")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = runner.invoke(app, ["erase", "--concept", "naked", "--method", "ace", "--model", str(tmp_path / "model")])
    assert res.exit_code == 1, res.output
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "needs a judge" in line
    assert "--evaluator ViT-L-14:openai" in line and "--allow-download" in line and "--patch-only" in line
    assert not any(work.iterdir())
    res = runner.invoke(app, ["erase", "--concept", "naked", "--model", str(tmp_path / "model"), "--evaluator",
                              "ViT-B-32:/no/such/weights.bin"])
    assert res.exit_code == 1 and "judge weights not found: /no/such/weights.bin" in res.stderr


def test_a_pretrained_tag_is_read_from_the_hugging_face_cache(tmp_path, monkeypatch, empty_hf_cache):
    """An open_clip ``pretrained`` tag resolves to the cached hub copy, offline, with the tag's settings."""
    import open_clip
    from open_clip import pretrained as registry
    from safetensors.torch import save_file

    from editflow.jobs.evaluate import check_judge, load_evaluator

    cfg = {"embed_dim": 16, "quick_gelu": False,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "editflow-tiny-vit.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "configs")
    tag = {"hf_hub": "editflow/tiny-vit-test/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    monkeypatch.setitem(registry._PRETRAINED, "editflow-tiny-vit", {"test": tag})
    with pytest.raises(EditflowError, match="not in the Hugging Face cache .*--allow-download"):
        load_evaluator("editflow-tiny-vit:test", real=True)
    with pytest.raises(EditflowError, match="no judge .*--patch-only"):
        check_judge("editflow-tiny-vit:test")
    check_judge("editflow-tiny-vit:test", allow_download=True)  # fetched later, by the evaluation

    torch.manual_seed(0)
    model = open_clip.create_model("editflow-tiny-vit", force_quick_gelu=True)
    repo = empty_hf_cache / "models--editflow--tiny-vit-test"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "open_clip_model.safetensors")
    check_judge("editflow-tiny-vit:test")
    judge = load_evaluator("editflow-tiny-vit:test", real=True)
    loaded = judge.model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())  # the cached weights
    assert judge.model.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"  # the tag's setting
    assert judge.mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_real_nudity_brings_implied_and_kept_prompts_none_of_them_the_evaluations():
    """A real nudity erasure trains on scenes that imply nudity ("a fully clothed woman at the beach" is
    what "a woman at the beach" should draw) and keeps clothed people and everyday scenes; the shipped
    evaluation's prompts are held out of both."""
    from editflow.edits.request import implied_pairs

    req = build_request(EraseJob(["naked"], model="m"))
    pairs = implied_pairs(req)
    assert len(pairs) >= 8 and all(a.startswith("a fully clothed ") for _, a, _ in pairs)
    assert ("a woman at the beach", "a fully clothed woman at the beach") in [(p, a) for p, a, _ in pairs]
    assert len(req.kept) >= 8
    evaluated = {r["prompt"].lower() for f in PROMPT_SETS.glob("*.csv") for r in read_rows(f)}
    trained = {p for pair in pairs for p in pair[:2]} | set(req.kept)
    assert not trained & evaluated
    assert build_request(EraseJob(["naked"], model="m", anchor="")).concepts[0].implied == ()  # nothing to draw
    style = build_request(EraseJob(["Van Gogh"], model="m", family="style"))
    assert style.kept == () and style.concepts[0].implied == ()


def test_auto_leaves_the_implied_stage_out_on_a_real_model_on_a_cpu_and_runs_it_when_asked(tmp_path, world, caplog):
    from dataclasses import replace

    from editflow.finetune import FinetuneMode
    from editflow.jobs.erase import finetune_config, run_erase

    pipe = tiny_sd_pipeline(tmp_path, world)
    req = build_request(EraseJob(["naked"], model="m", anchor="clothed"))
    # prompts in the tiny tokenizer's words (it spells unknown words letter by letter, past its 16 tokens)
    req = replace(req, concepts=[replace(req.concepts[0], implied=("a {} person at the beach",))],
                  kept=("a clothed person on the street", "a red star"))
    with caplog.at_level("WARNING"):
        assert finetune_config(EraseJob(["naked"], model="m"), req, pipe).mode is FinetuneMode.none
    assert "--finetune implied" in caplog.text
    assert finetune_config(EraseJob(["naked"]), req, pipe).mode is FinetuneMode.implied  # the embedded model
    asked = EraseJob(["naked"], model="m", finetune={"mode": "implied", "implied_steps": 2, "implied_images": 1,
                                                     "lora_rank": 2, "batch": 2})
    patch, _ = run_erase(asked, pipe, request=req)
    assert patch.gate is None and patch.metadata["finetune"]["config"]["mode"] == "implied"
    assert set(patch.metadata["finetune"]["losses"]) == {"loss", "implied", "preserve"}
