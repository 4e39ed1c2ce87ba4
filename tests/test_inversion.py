"""Concept inversion: token storage and loading, the restored pipeline, PGD's ball, and that a
token learned from rendered images of a world concept makes the embedded model draw it."""

import random

import pytest
import torch

from editflow.errors import EditflowError
from editflow.inversion import InversionConfig, LearnedTokens, invert, learned_tokens
from tests.tiny import tiny_sd_pipeline


@pytest.fixture()
def pipe(tmp_path, world):
    return tiny_sd_pipeline(tmp_path, world)


def _rendered(world, concept, n, seed=0):
    from editflow.world.captions import sample_scene
    from editflow.world.render import render

    rng = random.Random(seed)
    family = world.concept(concept).family
    fixed = {family: concept} if family == "identity" else {family: concept, "identity": "nobody"}
    return [render(sample_scene(rng, world, **fixed), world) for _ in range(n)]


def test_tokens_round_trip_and_load_in_diffusers(pipe, tmp_path):
    tok = LearnedTokens("<mine>", torch.randn(2, 16), {"concept": "star"})
    path = tok.save(tmp_path / "mine.safetensors")
    back = LearnedTokens.load(path)
    assert back.token == "<mine>" and torch.equal(back.vectors, tok.vectors) and back.metadata == {"concept": "star"}
    n, rows = len(pipe.tokenizer), pipe.text_encoder.get_input_embeddings().weight.shape[0]
    with learned_tokens(pipe, back):
        feats = pipe.encode_prompt("a <mine>", "cpu", 1, False)[0]
        assert len(pipe.tokenizer) == n + 2
    assert len(pipe.tokenizer) == n and pipe.text_encoder.get_input_embeddings().weight.shape[0] == rows
    assert pipe.text_encoder.config.vocab_size == rows  # a pipeline saved afterwards reloads
    pipe.load_textual_inversion(str(path))  # the file is diffusers' own format
    assert pipe.tokenizer.convert_tokens_to_ids("<mine>_1") == n + 1
    pipe.unload_textual_inversion()
    assert torch.isfinite(feats).all()


def test_bad_tokens_are_refused(pipe, tmp_path):
    with pytest.raises(EditflowError, match="already in the tokenizer"):
        with learned_tokens(pipe, LearnedTokens("star", torch.randn(1, 16))):
            pass
    with pytest.raises(EditflowError, match="another base model"):
        with learned_tokens(pipe, LearnedTokens("<x>", torch.randn(1, 32))):
            pass
    with pytest.raises(EditflowError, match="not finite"):
        LearnedTokens("<x>", torch.full((1, 16), float("nan")))
    (tmp_path / "two.safetensors").write_bytes(b"garbage")
    with pytest.raises(EditflowError, match="not a safetensors"):
        LearnedTokens.load(tmp_path / "two.safetensors")


def test_inversion_trains_only_the_token_and_pgd_stays_in_its_ball(pipe, world):
    images = _rendered(world, "star", 4)
    before = {k: v.clone() for m in (pipe.unet, pipe.text_encoder, pipe.vae) for k, v in m.state_dict().items()}
    n = len(pipe.tokenizer)
    cfg = InversionConfig(steps=6, batch=2, init_word="star", radius=0.5, lr=0.5)
    tok = invert(pipe, images, "<s>", cfg)
    init = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer("star", add_special_tokens=False).input_ids]
    assert (tok.vectors - init.mean(0)).norm() <= 0.5 * init.mean(0).norm() + 1e-5
    assert not torch.equal(tok.vectors, init.mean(0, keepdim=True))  # it moved
    after = {k: v for m in (pipe.unet, pipe.text_encoder, pipe.vae) for k, v in m.state_dict().items()}
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert len(pipe.tokenizer) == n
    assert all(p.requires_grad for p in pipe.unet.parameters())  # flags restored


def test_tries_inverted_together_learn_what_each_learns_alone(pipe, world):
    """One batch for several tries: each try draws from its own generators and gets only its own
    loss's gradient, so it ends where it would alone (up to the batch's float rounding)."""
    from editflow.inversion.invert import invert_tries

    images = _rendered(world, "star", 4)
    configs = [InversionConfig(steps=4, batch=2, seed=1, init_word="star"),
               InversionConfig(steps=4, batch=2, seed=2, lr=0.05, radius=0.3)]
    together = invert_tries(pipe, images, ["<a>", "<b>"], configs)
    for tok, name, cfg in zip(together, ["<a>", "<b>"], configs):
        alone = invert(pipe, images, name, cfg)
        assert tok.token == name and torch.allclose(tok.vectors, alone.vectors, atol=1e-4)
        assert tok.metadata["loss_last"] == pytest.approx(alone.metadata["loss_last"], rel=1e-4)
    assert not torch.allclose(together[0].vectors, together[1].vectors)
    with pytest.raises(ValueError, match="share steps and batch"):
        invert_tries(pipe, images, ["<a>", "<b>"], [configs[0], InversionConfig(steps=5, batch=2)])
    with pytest.raises(EditflowError, match="share a token"):
        invert_tries(pipe, images, ["<a>", "<a>"], configs)


def test_inversion_recovers_a_concept_on_the_embedded_model(embedded_pipe, judge, world):
    """A token learned from 16 rendered stars (never the word) makes the model draw stars."""
    from editflow.models.pipeline import generate

    tok = invert(embedded_pipe, _rendered(world, "star", 16, seed=3), "<star-look>",
                 InversionConfig(steps=150, seed=0))
    assert tok.metadata["loss_last"] < tok.metadata["loss_first"]
    with learned_tokens(embedded_pipe, tok):
        images = generate(embedded_pipe, ["a picture of a <star-look>"] * 16, list(range(16)))
    labels = judge.detect(images, world, "object")
    # the word itself draws stars 5 times in 6 on the shipped model; the learned token 10 of 16 (seed 0),
    # where the untrained token draws none (test_the_attack_baseline_is_the_token_before_inversion)
    assert sum(label == "star" for label in labels) / 16 >= 0.5, labels


def test_the_attack_baseline_is_the_token_before_inversion(embedded_pipe, judge, world):
    """``attack_baseline`` draws the attack's templates with the untrained (mean-embedding) token:
    on the unpatched model it must not find stars the way the word or a learned token does."""
    from editflow.evaluation.attack import draw_with_token, untrained_baseline
    from editflow.evaluation.detectors import WorldDetector
    from editflow.evaluation.prompts import EvalPrompt
    from editflow.inversion.invert import DEFAULT_TEMPLATES

    prompts = [EvalPrompt("a star", "star", "object", "target", "word", seed) for seed in range(16)]
    detector = WorldDetector(judge, world)
    floor = untrained_baseline(embedded_pipe, None, prompts, detector, DEFAULT_TEMPLATES)
    word = LearnedTokens("<word-star>", embedded_pipe.text_encoder.get_input_embeddings().weight[
        embedded_pipe.tokenizer("star", add_special_tokens=False).input_ids].detach().clone())
    _, found = draw_with_token(embedded_pipe, None, word, prompts, detector, DEFAULT_TEMPLATES)
    assert floor * 16 == round(floor * 16) and floor <= 0.3 < sum(found) / 16, (floor, found)
    assert len(embedded_pipe.tokenizer) == embedded_pipe.text_encoder.config.vocab_size  # tokens unloaded
