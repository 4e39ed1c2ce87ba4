"""Architecture of the embedded text-to-image model, built only from real library parts.

* text encoder: transformers ``CLIPTextModel`` (causal, as in SD), pretrained on the world's
  captions and then frozen, as Stable Diffusion freezes CLIP;
* VAE: a tiny diffusers ``AutoencoderKL`` (32x32x3 -> 16x16x4, factor 2);
* UNet: diffusers ``UNet2DConditionModel`` with cross-attention (``attn2.to_k/to_v`` as in SD);
* scheduler: diffusers ``DDPMScheduler`` for training, ``DPMSolverMultistepScheduler`` to sample.

Sizes live in :class:`EmbeddedArchitecture`, which ``configs/world/embedded.yaml`` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


@dataclass
class EmbeddedArchitecture:
    """Sizes of the embedded model's parts."""

    image_size: int = 32
    max_length: int = field(default=24, metadata={"help": "tokenizer model_max_length"})
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    vae_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 96, 128)
    unet_cross_attention: tuple[bool, ...] = field(
        default=(False, True, True), metadata={"help": "cross-attention per resolution level"}
    )
    unet_layers_per_block: int = 1
    unet_heads: int = field(default=4, metadata={"help": "diffusers' attention_head_dim (= heads)"})
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"

    def __post_init__(self):
        self.vae_channels = tuple(self.vae_channels)
        self.unet_channels = tuple(self.unet_channels)
        self.unet_cross_attention = tuple(self.unet_cross_attention)
        if len(self.unet_cross_attention) != len(self.unet_channels):
            raise ValueError("unet_cross_attention needs one entry per unet_channels level")
        if self.text_hidden % self.text_heads:
            raise ValueError("text_hidden must be divisible by text_heads")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {self.prediction_type!r}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


def build_text_encoder(arch: EmbeddedArchitecture, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=4 * arch.text_hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.max_length,
        projection_dim=arch.text_hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)


def build_vae(arch: EmbeddedArchitecture) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=arch.latent_channels,
        norm_num_groups=8,
        sample_size=arch.image_size,
    )


def build_unet(arch: EmbeddedArchitecture) -> UNet2DConditionModel:
    attn = arch.unet_cross_attention
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    return UNet2DConditionModel(
        sample_size=arch.latent_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=arch.unet_heads,
        norm_num_groups=16,
    )


def build_train_scheduler(arch: EmbeddedArchitecture) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=arch.train_timesteps,
        beta_schedule=arch.beta_schedule,
        prediction_type=arch.prediction_type,
        clip_sample=False,
    )


def build_sample_scheduler(arch: EmbeddedArchitecture) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler.from_config(build_train_scheduler(arch).config)
