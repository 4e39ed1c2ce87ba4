"""Closed-form edits on SD 1.5, SD 2.1 and SDXL architectures (published configs, random weights).

The quick tests shrink the UNet's channels (``width``) and the text encoders' depth but keep the
block layout, the number of cross-attention layers and the text-feature width the UNet reads
(768 / 1024 / 2048); the slow ones build the real sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editflow.edits import ConceptSpec, EraseRequest, get_method
from editflow.edits.conditioning import encode, positions
from editflow.edits.patch import base_hash
from editflow.edits.targets import TargetSpec
from editflow.models.reference import ARCHITECTURES, build_pipeline, unet_config

# transformer blocks per architecture: SD 1.x/2.x 16; SDXL 2x1 + 2x10 down, 10 mid, 3x10 + 3x2 up = 70
N_BLOCKS = {"sd15": 16, "sd21": 16, "sdxl": 70}
ARCHS = sorted(ARCHITECTURES)


@pytest.fixture(scope="module")
def world_tokenizer(embedded_pipe):
    return embedded_pipe.tokenizer


@pytest.fixture(scope="module")
def small(world_tokenizer):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = build_pipeline(arch, world_tokenizer, width=0.1, text_layers=2)
        return cache[arch]

    return get


def _request(**kw):
    return EraseRequest([ConceptSpec("star", ("asterisk",), "shape")], ["circle"],
                        templates=("a {}", "a red {} on a blue background"), **kw)


def _one_step(pipe, **kw):
    out = pipe(prompt=["a red star", "a circle"], num_inference_steps=1, height=64, width=64,
               generator=torch.Generator().manual_seed(0), output_type="np", **kw)
    return out.images


@pytest.mark.parametrize("arch", ARCHS)
def test_targets_found(arch, small):
    pipe = small(arch)
    found = TargetSpec().find(pipe.unet)
    assert len(found) == 2 * N_BLOCKS[arch]
    assert {m.in_features for m in found.values()} == {ARCHITECTURES[arch].context_dim}
    assert encode(pipe, ["a star"]).shape == (1, 77, ARCHITECTURES[arch].context_dim)


@pytest.mark.parametrize("arch", ARCHS)
def test_uce_maps_erased_embedding_to_target(arch, small):
    """Few erase embeddings, no preserve set, tiny λ: ``W' c = W c*`` is solvable exactly."""
    pipe = small(arch)
    req = EraseRequest([ConceptSpec("star", (), "shape")], [], templates=("a {}",), token_policy="last")
    cfg = get_method("uce").config_class(lam=1e-4, preserve_scale=0.0)
    patch = get_method("uce").compute(pipe, req, cfg)
    c, t = encode(pipe, ["a star"]), encode(pipe, ["a shape"])
    k = positions(pipe.tokenizer, "a star", "star", "last", c.shape[1])
    for name, m in list(TargetSpec().find(pipe.unet).items())[:6]:
        W = m.weight.detach()
        moved = c[0, k] @ (W + patch.edit.delta(name)).T
        want = t[0, k] @ W.T
        assert torch.allclose(moved, want, atol=1e-2 * want.abs().max().item()), name


@pytest.mark.parametrize("arch", ARCHS)
def test_ace_patch_applies_runs_and_reverts(arch, small):
    pipe = small(arch)
    targets = TargetSpec().find(pipe.unet)
    before = {n: m.weight.detach().clone() for n, m in targets.items()}
    h0 = base_hash(pipe.unet, TargetSpec())
    patch = get_method("ace").compute(pipe, _request(), get_method("ace").config_class())
    d = ARCHITECTURES[arch].context_dim
    assert 0 < patch.edit.rank <= d
    assert patch.edit.down.shape == (patch.edit.rank, d)
    assert {n: tuple(u.shape) for n, u in patch.edit.up.items()} == {
        n: (m.out_features, patch.edit.rank) for n, m in targets.items()}
    assert patch.gate is not None and patch.gate.basis.shape[0] == d
    plain = _one_step(pipe)
    for mode in ("gated", "merge"):
        with patch.apply(pipe, mode=mode):
            edited = _one_step(pipe)
        assert edited.shape == plain.shape and np.isfinite(edited).all()
    assert base_hash(pipe.unet, TargetSpec()) == h0
    for n, m in targets.items():
        assert torch.equal(m.weight, before[n]), n
    np.testing.assert_array_equal(_one_step(pipe), plain)


def test_sdxl_fallback_targets_read_both_encoders(small):
    pipe = small("sdxl")
    from editflow.edits.ace.method import fallback_targets

    prompts = ["a red star on a blue background"]
    c = encode(pipe, prompts)
    fb = fallback_targets(pipe, prompts, ["star"], c)
    assert fb.shape == c.shape == (1, 77, 2048)
    # the tokens before the concept do not see it: unchanged in both encoders' halves
    assert torch.allclose(fb[0, :3], c[0, :3], atol=1e-5)
    assert not torch.allclose(fb[0, 5:, :768], c[0, 5:, :768], atol=1e-4)
    assert not torch.allclose(fb[0, 5:, 768:], c[0, 5:, 768:], atol=1e-4)
    cfg = get_method("ace").config_class(target="fallback")
    patch = get_method("ace").compute(pipe, _request(), cfg)
    assert patch.edit.rank > 0


def test_shrunk_configs_keep_the_layout():
    for arch in ARCHS:
        full, small_cfg = unet_config(arch), unet_config(arch, 0.1)
        for key in ("down_block_types", "up_block_types", "cross_attention_dim", "layers_per_block"):
            assert full[key] == small_cfg[key]
        assert full.get("transformer_layers_per_block") == small_cfg.get("transformer_layers_per_block")
    with pytest.raises(ValueError, match="valid: sd15, sd21, sdxl"):
        build_pipeline("sd3", None)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_real_size_architecture(arch, world_tokenizer):
    """Real-size UNet and text encoders: erase, run one step gated, revert exactly."""
    torch.set_num_threads(2)
    pipe = build_pipeline(arch, world_tokenizer)
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    assert n_params > {"sd15": 8.5e8, "sd21": 8.6e8, "sdxl": 2.5e9}[arch]
    targets = TargetSpec().find(pipe.unet)
    assert len(targets) == 2 * N_BLOCKS[arch]
    first = next(iter(targets))
    w0 = targets[first].weight.detach().clone()
    patch = get_method("ace").compute(pipe, _request(), get_method("ace").config_class())
    assert patch.edit.down.shape[1] == ARCHITECTURES[arch].context_dim
    with patch.apply(pipe, mode="gated"):
        img = _one_step(pipe)
    assert np.isfinite(img).all()
    assert torch.equal(targets[first].weight, w0)


@pytest.mark.parametrize("arch", ["sd15", "sd21"])
def test_inversion_and_fmn_steps_run_on_the_architecture(arch, small):
    """One inversion, one FMN step and two minmax steps at SD 1.5 / 2.1 layout (768 / 1024-d text, 77 tokens)."""
    from PIL import Image

    from editflow.finetune import FinetuneConfig
    from editflow.finetune.fmn import fmn_finetune
    from editflow.finetune.minmax import minmax_finetune
    from editflow.inversion import InversionConfig, invert

    pipe = small(arch)
    size, n_tokens = pipe.unet.config.sample_size, len(pipe.tokenizer)
    pipe.unet.register_to_config(sample_size=8)  # 64 px images keep the steps cheap
    try:
        images = [Image.new("RGB", (64, 64), (200, 40, 40)), Image.new("RGB", (64, 64), (40, 40, 200))]
        tok = invert(pipe, images, "<red>", InversionConfig(steps=2, batch=1))
        assert tok.vectors.shape == (1, ARCHITECTURES[arch].context_dim) and len(pipe.tokenizer) == n_tokens
        patch = get_method("ace").compute(pipe, _request(), get_method("ace").config_class())
        cfg = FinetuneConfig(mode="fmn", steps=1, batch=1, fallbacks=1)
        tuned, facts = fmn_finetune(pipe, patch, [("a red star", "star")], ["a circle"], cfg)
        assert tuned.edit.rank == patch.edit.rank + cfg.extra_rank and np.isfinite(facts["loss"]["last"])
        # minmax: two defender steps over the ungated closed form, the attacker restarted between them
        ungated = get_method("ace").compute(pipe, _request(), get_method("ace").config_class(gated=False))
        cfg = FinetuneConfig(mode="minmax", minmax_steps=2, restart=1, attacker_steps=1, batch=1, lora_rank=2)
        tuned, facts = minmax_finetune(pipe, ungated, _request().concepts, {"star": images[:1]},
                                       [("a circle", images[1])], ("a {}",), cfg)
        assert tuned.edit.rank == ungated.edit.rank + 2 and facts["attacker_restarts"] == 1
        assert np.isfinite(facts["loss"]["last"]) and len(pipe.tokenizer) == n_tokens
    finally:
        pipe.unet.register_to_config(sample_size=size)


def test_sdxl_refuses_gradient_edits_clearly(small):
    from editflow.errors import EditflowError
    from editflow.inversion import invert

    with pytest.raises(EditflowError, match="SD 1.x/2.x-style UNets"):
        invert(small("sdxl"), [], "<x>")
