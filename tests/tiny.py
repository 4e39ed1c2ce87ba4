"""Tiny seeded diffusers components (as diffusers' own `get_dummy_components`), for fast tests."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from editflow.models.tokenizer import save_tokenizer


def tiny_sd_pipeline(tmp_dir, world, dim: int = 16, seed: int = 0) -> StableDiffusionPipeline:
    save_tokenizer(world.vocabulary(), tmp_dir / "tok", model_max_length=16)
    tok = CLIPTokenizer.from_pretrained(tmp_dir / "tok")
    torch.manual_seed(seed)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=dim, intermediate_size=2 * dim,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=dim, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te.eval(), tokenizer=tok, unet=unet.eval(),
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def star_request():
    """Erase star (word and synonym, anchor "shape"), keep circle and heart: the tiny tests' request."""
    from editflow.edits import ConceptSpec, EraseRequest

    return EraseRequest([ConceptSpec("star", ("pentagram",), anchor="shape")], preserve=["circle", "heart"])


def pipeline_state(pipe) -> dict[str, torch.Tensor]:
    """Copies of every weight of the pipeline's UNet, text encoder and VAE (to check nothing moved)."""
    return {f"{n}.{k}": v.clone() for n in ("unet", "text_encoder", "vae")
            for k, v in getattr(pipe, n).state_dict().items()}
