"""Architecture-exact Stable Diffusion pipelines with random weights, built offline.

Real SD weights cannot be had here, but the code paths that serve them can be exercised: these
builders take the published configurations of SD 1.5, SD 2.1 and SDXL base 1.0 (UNet, CLIP
text encoders, VAE, scheduler, as in their ``*/config.json`` on the hub) and instantiate the
diffusers / transformers classes with random weights. ``width`` < 1 shrinks every channel count
by that factor (keeping block types, depths and the text-feature width; one head per level), for
fast tests of the same structure; ``width=1`` is the real size (SDXL: 2.6 B UNet parameters).

A tokenizer is passed in (any CLIP BPE tokenizer; tests use the embedded world's); it is set to
the real models' 77-token context. Nothing is downloaded.

:func:`save_pipeline` writes a built pipeline as a diffusers folder (safetensors, optionally in
float16 like the published checkpoints), which ``editflow.models.pipeline.load_pipeline``,
``--model FOLDER`` and ``StableDiffusionPipeline.from_pretrained`` load like a real checkpoint.
"""

from __future__ import annotations

import copy
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768, "hidden_act": "quick_gelu"}
OPENCLIP_H = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
              "projection_dim": 512, "hidden_act": "gelu"}
OPENCLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                 "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"}

_SD_BLOCKS = {"block_out_channels": [320, 640, 1280, 1280],
              "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
              "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
              "layers_per_block": 2, "norm_num_groups": 32, "in_channels": 4, "out_channels": 4}
SD15_UNET = {**_SD_BLOCKS, "attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64}
SD21_UNET = {**_SD_BLOCKS, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
             "use_linear_projection": True, "upcast_attention": True, "sample_size": 96}
SDXL_UNET = {"block_out_channels": [320, 640, 1280],
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
             "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
             "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
             "layers_per_block": 2, "norm_num_groups": 32, "in_channels": 4, "out_channels": 4, "sample_size": 128}
SD_VAE = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
          "up_block_types": ["UpDecoderBlock2D"] * 4, "latent_channels": 4, "layers_per_block": 2,
          "norm_num_groups": 32, "sample_size": 512}
_SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


@dataclass(frozen=True)
class Architecture:
    name: str
    unet: dict
    text_encoders: tuple[dict, ...]
    vae_scaling: float
    prediction_type: str = "epsilon"
    extra: dict = field(default_factory=dict)

    @property
    def context_dim(self) -> int:
        return self.unet["cross_attention_dim"]


ARCHITECTURES = {
    "sd15": Architecture("sd15", SD15_UNET, (CLIP_L,), 0.18215),
    "sd21": Architecture("sd21", SD21_UNET, (OPENCLIP_H,), 0.18215, prediction_type="v_prediction"),
    "sdxl": Architecture("sdxl", SDXL_UNET, (CLIP_L, OPENCLIP_BIGG), 0.13025),
}


def _shrink(channels: list[int], width: float, groups: int) -> list[int]:
    return [max(groups, int(round(c * width / groups)) * groups) for c in channels]


def unet_config(arch: str | Architecture, width: float = 1.0) -> dict:
    """The published UNet config of ``arch``; ``width`` < 1 scales channels (one attention head per level)."""
    a = ARCHITECTURES[arch] if isinstance(arch, str) else arch
    cfg = copy.deepcopy(a.unet)
    if width != 1.0:
        groups = 8
        cfg["norm_num_groups"] = groups
        cfg["block_out_channels"] = _shrink(cfg["block_out_channels"], width, groups)
        heads = cfg["attention_head_dim"]  # diffusers' SD configs store heads per level under this name
        cfg["attention_head_dim"] = [1 for _ in cfg["block_out_channels"]] if isinstance(heads, list) else 1
        if "addition_time_embed_dim" in cfg:
            cfg["addition_time_embed_dim"] = 8
            # text_time: pooled text (last encoder's projection) + 6 time ids x addition_time_embed_dim
            cfg["projection_class_embeddings_input_dim"] = a.text_encoders[-1]["projection_dim"] + 6 * 8
    return cfg


def _text_encoder(spec: dict, tokenizer, with_projection: bool, layers: int | None, dtype):
    cfg = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **{**spec, **({"num_hidden_layers": layers} if layers else {})})
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg).to(dtype).eval()


def build_pipeline(arch: str, tokenizer, *, width: float = 1.0, text_layers: int | None = None,
                   dtype: torch.dtype = torch.float32, seed: int = 0):
    """A diffusers pipeline of ``arch`` (``sd15``, ``sd21``, ``sdxl``) with random weights.

    ``text_layers`` limits the text encoders' depth (the feature width the UNet reads is kept).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    a = ARCHITECTURES[arch]
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_max_length = 77
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(a, width)).to(dtype).eval()
    vae_cfg = copy.deepcopy(SD_VAE)
    if width != 1.0:
        vae_cfg.update(block_out_channels=_shrink(vae_cfg["block_out_channels"], width, 8), norm_num_groups=8)
    vae = AutoencoderKL(**vae_cfg, scaling_factor=a.vae_scaling).to(dtype).eval()
    if arch == "sdxl":
        te1 = _text_encoder(a.text_encoders[0], tokenizer, False, text_layers, dtype)
        te2 = _text_encoder(a.text_encoders[1], tokenizer, True, text_layers, dtype)
        sched = EulerDiscreteScheduler(**_SD_BETAS, timestep_spacing="leading", steps_offset=1)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer,
                                         tokenizer_2=copy.deepcopy(tokenizer), unet=unet, scheduler=sched)
    else:
        te = _text_encoder(a.text_encoders[0], tokenizer, False, text_layers, dtype)
        sched = PNDMScheduler(**_SD_BETAS, skip_prk_steps=True, steps_offset=1, prediction_type=a.prediction_type)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def _cast_in_place(modules: list[torch.nn.Module], dtype: torch.dtype | None):
    """Every floating parameter and buffer of ``modules`` as ``dtype`` inside the block; the original
    tensors are put back afterwards, unrounded (the cast copies cost one model in ``dtype``)."""
    swapped: list[tuple[dict, str, torch.Tensor, bool]] = []
    casts: dict[int, torch.Tensor] = {}  # shared tensors stay shared
    try:
        for module in modules:
            for m in module.modules() if dtype is not None else ():
                for store, is_param in ((m._parameters, True), (m._buffers, False)):
                    for name, t in store.items():
                        if t is None or not t.is_floating_point() or t.dtype == dtype:
                            continue
                        new = casts.setdefault(id(t), t.detach().to(dtype))
                        swapped.append((store, name, t, is_param))
                        if is_param:
                            store[name] = torch.nn.Parameter(new, requires_grad=t.requires_grad)
                        else:
                            store[name] = new
        yield
    finally:
        for store, name, t, _ in reversed(swapped):
            store[name] = t


def save_pipeline(pipe, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe`` (e.g. from :func:`build_pipeline`) to ``folder`` as a diffusers pipeline
    folder: ``model_index.json``, one sub-folder per component, weights as safetensors.

    ``dtype`` (e.g. ``torch.float16``, as the published checkpoints ship) sets the stored weights'
    precision without changing ``pipe``; ``None`` keeps its own. The folder is written next to its
    final place and renamed into it when complete, so a reader never sees half a model; an existing
    ``folder`` is refused. Full size on disk: SD 1.5 ~4.3 GB in float32 (half in float16), SDXL ~14 GB.
    """
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; save_pipeline writes a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    try:
        with _cast_in_place(modules, dtype):
            pipe.save_pretrained(partial, safe_serialization=True)
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder
