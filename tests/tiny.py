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


def tiny_judge_dir(folder, tokenizer, seed: int = 0):
    """A random-weight open_clip ``local-dir`` judge (the embedded evaluator's architecture) with
    ``tokenizer``: what a user's ViT-L/14 folder is to a real model, at test size."""
    import json
    from pathlib import Path

    import open_clip
    from safetensors.torch import save_file

    from editflow.models.evaluator import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, preprocess_config, tiny_clip_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    cfg = {"model_cfg": tiny_clip_config(len(tokenizer), 77, 32), "preprocess_cfg": preprocess_config(32)}
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder.resolve()}", load_weights=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / OPEN_CLIP_WEIGHTS)
    return folder
