"""The gradient stage: attention capture and suppression through editflow's processor, FMN's
re-steering loss going down, only patch parameters trained (base bit-identical), adversarial
rounds growing the erase set, and the ESD baseline's target formula."""

import pytest
import torch

from editflow.edits import ConceptSpec, EraseRequest, get_method
from editflow.edits.ace import ACEConfig
from editflow.edits.attention import CrossAttnProcessor, attention_processors, capture_attention, token_attention
from editflow.edits.esd import ESDConfig, esd_target
from editflow.finetune import FinetuneConfig, finetune
from editflow.finetune.fmn import TrainableFactors, concept_mask
from editflow.models import diffusion as D
from tests.tiny import pipeline_state, star_request, tiny_sd_pipeline


@pytest.fixture()
def pipe(tmp_path, world):
    return tiny_sd_pipeline(tmp_path, world)


_request = star_request
_state = pipeline_state


def _types(unet):
    return {k: type(v) for k, v in unet.attn_processors.items()}


def _unet_step(pipe, prompts, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), 4, 8, 8, generator=gen)
    return pipe.unet(x, torch.tensor([500] * len(prompts)), D.text_features(pipe, prompts)).sample


def test_attention_capture_restores_processors_even_on_error(pipe):
    before = _types(pipe.unet)
    with torch.no_grad(), capture_attention(pipe.unet) as maps:
        _unet_step(pipe, ["a red star", "a circle"])
    names = {n for n, _ in maps}
    assert len(names) == len([k for k in before if "attn2" in k]) and len(maps) == len(names)
    for _, probs in maps:  # probabilities over the text tokens
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
        assert probs.shape[-1] == pipe.tokenizer.model_max_length
    assert _types(pipe.unet) == before
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(pipe.unet):
            raise RuntimeError("boom")
    assert _types(pipe.unet) == before


def test_capture_without_changes_matches_the_stock_processor(pipe):
    with torch.no_grad():
        base = _unet_step(pipe, ["a red star"])
        with capture_attention(pipe.unet):
            captured = _unet_step(pipe, ["a red star"])
    assert torch.allclose(base, captured, atol=1e-5)


def test_suppressed_tokens_get_no_attention(pipe):
    prompts = ["a red star", "a blue star"]
    mask = concept_mask(pipe, prompts, ["star", "star"], pipe.tokenizer.model_max_length)
    assert mask.sum() == 2 * (pipe.tokenizer.model_max_length - 3)  # <bos> a red | star ... pad
    maps = []
    probe = lambda name, probs: maps.append(probs)  # noqa: E731
    with torch.no_grad(), attention_processors(pipe.unet, lambda n: CrossAttnProcessor(n, probe=probe,
                                                                                        suppress=mask)):
        _unet_step(pipe, prompts)
    assert maps and all(float(p[mask[:, None, None, :].expand_as(p)].abs().max()) == 0.0 for p in maps)
    assert all(torch.allclose(p.sum(-1), torch.ones(())) for p in maps)
    # a classifier-free-guided batch [uncond, cond] leaves the unconditional half alone
    proc = CrossAttnProcessor("x", suppress=mask)
    full = proc._mask(4, mask.shape[1], "cpu")[:, 0, 0]
    assert not full[:2].any() and torch.equal(full[2:], mask)


def test_resteering_loss_decreases_and_only_patch_factors_train(pipe):
    req = _request()
    patch = get_method("ace").compute(pipe, req, ACEConfig(rank_energy=1.0))
    state, procs = _state(pipe), _types(pipe.unet)
    prompts = ["a star", "a red star", "a pentagram", "a picture of a star"]
    words = ["star", "star", "pentagram", "star"]
    mask = concept_mask(pipe, prompts, words, pipe.tokenizer.model_max_length)

    def resteer(factors):
        with torch.no_grad(), capture_attention(pipe.unet, factors.delta_for) as maps:
            _unet_step(pipe, prompts, seed=1)
        return token_attention(maps, mask).item()

    before = resteer(TrainableFactors(patch, 4))
    cfg = FinetuneConfig(mode="fmn", steps=40, lr=1e-2, denoise_weight=0.0, preserve_weight=0.0, fallbacks=4)
    from editflow.finetune.fmn import fmn_finetune

    tuned, facts = fmn_finetune(pipe, patch, list(zip(prompts, words)), [], cfg)
    after = resteer(TrainableFactors(tuned, 0))
    assert after < 0.8 * before, (before, after)
    assert facts["resteer"]["last"] < facts["resteer"]["first"]
    assert tuned.edit.rank == patch.edit.rank + 4 and set(tuned.edit.up) == set(patch.edit.up)
    assert tuned.gate is patch.gate
    state_after = _state(pipe)
    assert all(torch.equal(v, state_after[k]) for k, v in state.items())  # base weights bit-identical
    assert _types(pipe.unet) == procs


def test_adversarial_rounds_grow_the_erase_set_and_keep_the_base(pipe):
    req = _request()
    method, cfg = get_method("ace"), ACEConfig()
    patch = method.compute(pipe, req, cfg)
    state, n_tok = _state(pipe), len(pipe.tokenizer)
    seen = []
    ft = FinetuneConfig(mode="adv", rounds=2, steps=2, attack_steps=3, references=2, fallbacks=2, batch=2)
    tuned = finetune(pipe, req, patch, lambda r: method.compute(pipe, r, cfg), ft,
                     progress=lambda event, info: seen.append(event))
    assert seen == ["round", "round", "step", "step"]
    adv = tuned.metadata["finetune"]["adversarial"]
    assert [a["search"] for a in adv] == ["inversion", "pgd"] and all(a["concept"] == "star" for a in adv)
    aliases = tuned.metadata["concepts"][0]["aliases"]
    assert [a["token"] for a in adv] == [w for w in aliases if w.startswith("<adv-")]
    assert len(pipe.tokenizer) == n_tok
    state_after = _state(pipe)
    assert all(torch.equal(v, state_after[k]) for k, v in state.items())
    # the patch still applies and reverts exactly
    with torch.no_grad():
        base = _unet_step(pipe, ["a star"])
        with tuned.apply(pipe):
            edited = _unet_step(pipe, ["a star"])
        assert torch.equal(base, _unet_step(pipe, ["a star"]))
    assert not torch.allclose(base, edited)


def test_esd_target_matches_the_formula_on_hand_inputs():
    uncond, cond = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([3.0, 5.0, -1.0])
    assert torch.equal(esd_target(uncond, cond, 1.0), torch.tensor([-1.0, -1.0, -1.0]))
    assert torch.equal(esd_target(uncond, cond, 0.0), uncond)
    assert torch.equal(esd_target(uncond, cond, 2.0), torch.tensor([-3.0, -4.0, -1.0]))
    # affine in the prediction: the same target in ε and in v = a ε - s x0 for fixed x_t
    a, s, x0 = 0.6, 0.8, torch.tensor([0.5, -0.2, 0.1])
    to_v = lambda eps: a * eps - s * x0  # noqa: E731
    assert torch.allclose(to_v(esd_target(uncond, cond, 1.5)), esd_target(to_v(uncond), to_v(cond), 1.5))


def test_esd_u_trains_a_self_attention_lora_patch(pipe, tmp_path):
    from editflow.edits import Patch
    from editflow.edits.export import lora_state_dict

    state, procs = _state(pipe), _types(pipe.unet)
    patch = get_method("esd-u").compute(pipe, _request(), ESDConfig(esd_steps=4, trajectories=2, sample_steps=3,
                                                                   lora_rank=2))
    assert not patch.edit.shared and patch.edit.rank == 2 and patch.gate is None
    assert all(".attn1." in n for n in patch.edit.up) and len(patch.edit.up) == 4 * len(
        [k for k in procs if "attn1" in k])
    assert any(u.abs().sum() > 0 for u in patch.edit.up.values())
    assert all(torch.equal(v, _state(pipe)[k]) for k, v in state.items())  # hooks gone, base untouched
    back = Patch.load(patch.save(tmp_path / "u.safetensors"))
    assert not back.edit.shared and all(torch.equal(back.edit.delta(n), patch.edit.delta(n)) for n in patch.edit.up)
    sd = lora_state_dict(back)
    name = sorted(patch.edit.up)[0]
    assert torch.equal(sd[f"unet.{name}.lora_B.weight"] @ sd[f"unet.{name}.lora_A.weight"], patch.edit.delta(name))
    with pytest.raises(Exception, match="merge"):
        back.apply(pipe, mode="gated")
    with torch.no_grad():
        base = _unet_step(pipe, ["a star"])
        with back.apply(pipe):
            edited = _unet_step(pipe, ["a star"])
        assert torch.equal(base, _unet_step(pipe, ["a star"]))
    assert not torch.allclose(base, edited)


@pytest.mark.parametrize("preserve_weight", [0.0, 1.0])
def test_esd_x_trains_a_patch_and_leaves_the_base(pipe, preserve_weight):
    state = _state(pipe)
    patch = get_method("esd-x").compute(pipe, _request(), ESDConfig(esd_steps=5, trajectories=2, sample_steps=3,
                                                                   preserve_weight=preserve_weight))
    d = pipe.text_encoder.config.hidden_size
    assert patch.gate is None and patch.edit.rank == d and torch.equal(patch.edit.down, torch.eye(d))
    assert any(u.abs().sum() > 0 for u in patch.edit.up.values())
    state_after = _state(pipe)
    assert all(torch.equal(v, state_after[k]) for k, v in state.items())
    with torch.no_grad():
        base = _unet_step(pipe, ["a star"])
        with patch.apply(pipe):
            assert not torch.allclose(base, _unet_step(pipe, ["a star"]))


@pytest.mark.parametrize("restart, attackers, restarts", [(1, 1, 2), (0, 1, 0), (0, 2, 0)])  # 0: persistent
def test_minmax_trains_a_lora_over_the_ungated_closed_form_and_keeps_the_base(pipe, restart, attackers, restarts):
    """minmax: the attackers restart into their bank (or never), only the LoRA trains (base
    bit-identical, the closed form's factors kept as they were), its learning rate decays from
    minmax_lr to lr_final of it at the last step, and a gated patch is refused."""
    from editflow.errors import EditflowError

    req = _request()
    method = get_method("ace")
    patch = method.compute(pipe, req, ACEConfig(gated=False))
    state, n_tok = _state(pipe), len(pipe.tokenizer)
    seen = []
    ft = FinetuneConfig(mode="minmax", minmax_steps=3, restart=restart, replay=1, attacker_steps=1, lora_rank=2,
                        references=2, keep_images=1, batch=2, preserve_focus=0.5, attackers=attackers, lr_final=0.1)
    tuned = finetune(pipe, req, patch, lambda r: method.compute(pipe, r, ACEConfig(gated=False)), ft,
                     progress=lambda event, info: seen.append(event))
    assert seen == ["step"] * 3
    losses = tuned.metadata["finetune"]["losses"]
    assert losses["attacker_restarts"] == restarts and set(losses) >= {"attack", "adversarial", "word", "preserve"}
    assert losses["lr"]["first"] == ft.minmax_lr and losses["lr"]["last"] == pytest.approx(0.1 * ft.minmax_lr)
    assert tuned.gate is None and not tuned.edit.shared
    for name, up in patch.edit.up.items():
        r = up.shape[1]
        assert tuned.edit.up[name].shape[1] == r + 2 and tuned.edit.down_for(name).shape[0] == r + 2
        assert torch.equal(tuned.edit.up[name][:, :r], up)
        assert torch.equal(tuned.edit.down_for(name)[:r], patch.edit.down)
        assert tuned.edit.up[name][:, r:].abs().sum() > 0  # the LoRA moved off its zero start
    assert len(pipe.tokenizer) == n_tok
    state_after = _state(pipe)
    assert all(torch.equal(v, state_after[k]) for k, v in state.items())
    with pytest.raises(EditflowError, match="ungated"):
        finetune(pipe, req, method.compute(pipe, req, ACEConfig()), lambda r: None, ft)


def test_minmax_draws_neighbours_from_their_scenes_and_other_preserved_words_from_their_prompts():
    """With neighbour_images, each of the request's neighbours gets that many prompts from its scene
    templates (in turn); every other preserved word keep_images from its own prompts. Without, the
    neighbours are drawn like the rest."""
    from editflow.finetune.run import minmax_keep_prompts

    req = EraseRequest([ConceptSpec("kasimir")], preserve=["odalys", "star"],
                       prompts={"odalys": ("a shape by {}",), "star": ("a {}",)},
                       neighbours={"odalys": ("a red moon by {}", "a blue heart in the style of {}")})
    ft = FinetuneConfig(mode="minmax", neighbour_images=3, keep_images=1)
    assert minmax_keep_prompts(req, ft) == ["a star", "a red moon by odalys", "a blue heart in the style of odalys",
                                            "a red moon by odalys"]
    assert minmax_keep_prompts(req, FinetuneConfig(mode="minmax", keep_images=1)) == ["a shape by odalys", "a star"]
    with pytest.raises(ValueError, match="neighbours must be preserved"):
        EraseRequest([ConceptSpec("kasimir")], preserve=["star"], neighbours={"odalys": ("{}",)})
    with pytest.raises(ValueError, match="neighbour_images"):
        FinetuneConfig(neighbour_images=-1)


@pytest.mark.parametrize("source", ["prompts", "templates", "scenes"])
def test_minmax_draws_the_concept_from_its_own_prompts_or_the_request_scenes(pipe, monkeypatch, source):
    """scene_references: the concept's reference images come from the request's described scenes of
    it, or its scene templates (its erase contexts) where it has none; else from its own prompts;
    ``references`` of them either way."""
    import editflow.finetune.run as run

    drawn = []
    real = run.reference_images

    def spy(pipe, concept, templates, n, seed=0):
        drawn.append((templates, n))
        return real(pipe, concept, templates, n, seed)

    monkeypatch.setattr(run, "reference_images", spy)
    scenes = {"star": ("a blue {}", "a white {}")} if source == "scenes" else {}
    req = EraseRequest([ConceptSpec("star", anchor="shape")], preserve=["circle"], templates=("a red {}", "a {} here"),
                       prompts={"star": ("a {}",)}, scenes=scenes)
    method = get_method("ace")
    ft = FinetuneConfig(mode="minmax", minmax_steps=1, attacker_steps=1, lora_rank=2, references=3, keep_images=1,
                        batch=2, attackers=1, scene_references=source != "prompts")
    finetune(pipe, req, method.compute(pipe, req, ACEConfig(gated=False)), lambda r: None, ft)
    expected = {"prompts": ("a {}",), "templates": ("a red {}", "a {} here"), "scenes": ("a blue {}", "a white {}")}
    assert drawn == [(expected[source], 3)]
    with pytest.raises(ValueError, match="scenes must be erased"):
        EraseRequest([ConceptSpec("star")], scenes={"circle": ("a {}",)})
    with pytest.raises(ValueError, match="exactly one"):
        EraseRequest([ConceptSpec("star")], scenes={"star": ("a blue star",)})


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_minmax_word_term_says_the_concept_in_the_request_contexts(pipe, monkeypatch, share):
    """scene_words: that share of the defender's prompts for the concept's words come from the
    request's scene templates and described scenes of it, each with its neutral version for the
    guided target; at 0 only the attack's plain templates are said."""
    import editflow.finetune.minmax as minmax

    said = []
    real = minmax.D.text_features

    def spy(pipe, prompts, *a, **kw):
        said.extend(prompts)
        return real(pipe, prompts, *a, **kw)

    monkeypatch.setattr(minmax.D, "text_features", spy)
    req = EraseRequest([ConceptSpec("star", ("pentagram",), anchor="shape")], preserve=["circle"],
                       templates=("a red {} on a dark background",), scenes={"star": ("a blue {}",)})
    method = get_method("ace")
    ft = FinetuneConfig(mode="minmax", minmax_steps=2, attacker_steps=1, lora_rank=2, references=2, keep_images=1,
                        batch=4, attackers=1, scene_words=share)
    patch = method.compute(pipe, req, ACEConfig(gated=False))
    said.clear()  # the closed form says the request's templates too
    finetune(pipe, req, patch, lambda r: None, ft)
    contexts = {t.format(w) for t in ("a red {} on a dark background", "a blue {}") for w in ("star", "pentagram")}
    neutral = {"a red shape on a dark background", "a blue shape"}
    assert bool(set(said) & contexts) == bool(share) == bool(set(said) & neutral)
    if share:  # every word prompt of a step is in a context, beside the plain ones the adversarial target uses
        assert len([p for p in said if p in contexts]) == 2 * ft.batch
    with pytest.raises(ValueError, match="scene_words"):
        FinetuneConfig(scene_words=1.5)


def test_minmax_defender_moves_the_concept_towards_the_negatively_guided_target(pipe):
    """The defender's objective, on a batch training never saw: with the patch, the prediction for
    the concept's word on its noised images approaches ESD's target of the base model,
    ε(x_t, anchor) − η (ε(x_t, concept) − ε(x_t, anchor)) (Gandikota et al. 2023, eq. 3)."""
    from editflow.finetune.minmax import minmax_finetune
    from editflow.finetune.run import keep_prompts, preserve_images, reference_images

    req = _request()
    concept = req.concepts[0]
    patch = get_method("ace").compute(pipe, req, ACEConfig(gated=False))
    plain = ("a {}", "a picture of a {}")
    images = reference_images(pipe, concept, plain, 4)
    keep = preserve_images(pipe, keep_prompts(req.preserve, plain, 1))
    assert [p for p, _ in keep] == ["a circle", "a picture of a heart"]  # templates in turn across concepts
    ft = FinetuneConfig(mode="minmax", minmax_steps=30, minmax_lr=1e-2, restart=10, attacker_steps=1, lora_rank=4,
                        batch=2, minmax_preserve=1.0, eta=1.0, attackers=1)  # one: 30 steps against each
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        x0 = D.to_latents(pipe, images)
        t = torch.tensor([200, 400, 600, 800])
        x_t = D.add_noise(pipe.scheduler, x0, torch.randn(x0.shape, generator=gen), t)
        word, anchor = D.text_features(pipe, ["a star"] * 4), D.text_features(pipe, ["a shape"] * 4)
        e_anchor = D.unet_output(pipe, x_t, t, anchor)
        goal = e_anchor - ft.eta * (D.unet_output(pipe, x_t, t, word) - e_anchor)

    def gap(p):
        with torch.no_grad(), p.apply(pipe):
            return torch.nn.functional.mse_loss(D.unet_output(pipe, x_t, t, word), goal).item()

    before = gap(patch)
    tuned, facts = minmax_finetune(pipe, patch, [concept], {"star": images}, keep, plain, ft)
    after = gap(tuned)
    assert after < 0.9 * before, (before, after)
    assert facts["word"]["last"] < facts["word"]["first"] and facts["attacker_restarts"] == 2



def _implied_request():
    """star, plus an implied prompt: "a star at night" draws the star though no caption says so."""
    from dataclasses import replace

    req = _request()
    return replace(req, concepts=[replace(req.concepts[0], implied=("a {} star at night",))],
                   kept=("a circle at night",))


def test_auto_decides_implied_only_for_requests_with_implied_prompts_and_a_closed_form():
    from editflow.finetune import FinetuneMode, resolve_mode
    from editflow.jobs.erase import EraseJob, finetune_config

    assert FinetuneConfig().mode is FinetuneMode.auto
    assert resolve_mode(FinetuneConfig(), _implied_request()).mode is FinetuneMode.implied
    assert resolve_mode(FinetuneConfig(), _request()).mode is FinetuneMode.none
    assert resolve_mode(FinetuneConfig(), _implied_request(), closed_form=False).mode is FinetuneMode.none
    assert resolve_mode(FinetuneConfig(mode="fmn"), _implied_request()).mode is FinetuneMode.fmn
    assert finetune_config(EraseJob(["naked"], "esd-x"), _implied_request()).mode is FinetuneMode.none
    assert finetune_config(EraseJob(["naked"], "uce"), _implied_request()).mode is FinetuneMode.implied
    with pytest.raises(ValueError, match="implied_lr"):
        FinetuneConfig(implied_lr=0)


def test_implied_trains_a_lora_over_the_ungated_closed_form_and_keeps_the_base(pipe):
    """implied: the closed form's directions held, the LoRA moved, only it trained (base bit-identical),
    the kept prompts drawn as the preserved pictures; a gated patch or a request without implied
    prompts is refused."""
    from editflow.errors import EditflowError
    from editflow.finetune.run import implied_images

    req = _implied_request()
    method = get_method("ace")
    patch = method.compute(pipe, req, ACEConfig(gated=False))
    state = _state(pipe)
    ft = FinetuneConfig(mode="implied", implied_steps=3, implied_images=2, lora_rank=2, batch=2)
    pairs = implied_images(pipe, req, ft)
    assert [(p, a) for p, a, _ in pairs] == [("a star at night", "a shape star at night")] * 2
    seen = []
    tuned = finetune(pipe, req, patch, lambda r: None, ft, progress=lambda event, info: seen.append(event))
    assert seen == ["step"] * 3
    assert set(tuned.metadata["finetune"]["losses"]) == {"loss", "implied", "preserve"}
    assert tuned.gate is None
    for name, up in patch.edit.up.items():
        r = up.shape[1]
        assert tuned.edit.up[name].shape[1] == r + 2
        assert torch.equal(tuned.edit.up[name][:, :r], up)
        assert torch.equal(tuned.edit.down_for(name)[:r], patch.edit.down)
        assert tuned.edit.up[name][:, r:].abs().sum() > 0
    after = _state(pipe)
    assert all(torch.equal(v, after[k]) for k, v in state.items())
    with pytest.raises(EditflowError, match="ungated"):
        finetune(pipe, req, method.compute(pipe, req, ACEConfig()), lambda r: None, ft)
    with pytest.raises(EditflowError, match="implied prompts"):
        finetune(pipe, _request(), patch, lambda r: None, ft)


def test_implied_moves_the_implied_prompt_towards_the_anchored_prediction(pipe):
    """Concept Ablation's objective (Kumari et al. 2023, eq. 3), on a batch training never saw: with
    the patch, the implied prompt's prediction on noised pictures of the anchored prompt approaches
    the base model's prediction for the anchored prompt, while a kept prompt's stays near the base's."""
    from editflow.finetune.implied import implied_finetune
    from editflow.finetune.run import implied_images, preserve_images

    req = _implied_request()
    patch = get_method("ace").compute(pipe, req, ACEConfig(gated=False))
    ft = FinetuneConfig(mode="implied", implied_steps=40, implied_lr=1e-2, implied_images=4, lora_rank=4, batch=2)
    pairs = implied_images(pipe, req, ft)
    keep = preserve_images(pipe, list(req.kept) * 2)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        x0 = D.to_latents(pipe, [img for _, _, img in pairs])
        t = torch.tensor([200, 400, 600, 800])
        x_t = D.add_noise(pipe.scheduler, x0, torch.randn(x0.shape, generator=gen), t)
        implied = D.text_features(pipe, ["a star at night"] * 4)
        goal = D.unet_output(pipe, x_t, t, D.text_features(pipe, ["a shape star at night"] * 4))

    def gap(p):
        with torch.no_grad(), p.apply(pipe):
            return torch.nn.functional.mse_loss(D.unet_output(pipe, x_t, t, implied), goal).item()

    before = gap(patch)
    tuned, facts = implied_finetune(pipe, patch, pairs, keep, ft)
    assert gap(tuned) < 0.8 * before, (before, gap(tuned))
    assert facts["implied"]["last"] < facts["implied"]["first"]
