"""The judge: an open_clip model for CLIP score and zero-shot concept detection.

The same class serves the embedded tiny evaluator and a real checkpoint a user supplies
(e.g. ViT-L/14 for real Stable Diffusion): both are loaded through open_clip's own API from a
local folder (``local-dir:`` schema: ``open_clip_config.json`` + ``open_clip_model.safetensors``
+ tokenizer files), from a model name plus a local weights file, or from a model name plus an
open_clip ``pretrained`` tag found in the Hugging Face cache. Nothing is downloaded unless asked.

CLIP score follows Hessel et al., "CLIPScore" (EMNLP 2021): ``100 * max(cos(E_img, E_txt), 0)``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from editflow.world.spec import WorldSpec

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def tiny_clip_config(vocab_size: int, context_length: int, image_size: int = 32) -> dict:
    """open_clip ``model_cfg`` of the embedded evaluator: open_clip's ``ModifiedResNet`` (the
    CLIP RN50 design, chosen by a list of ``layers``) at width 16, and a small text tower.

    A 3-layer patch-4 ViT reached only 59 % zero-shot object accuracy after the same training;
    convolutions learn the world's shapes far faster on a CPU budget.
    """
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": image_size, "layers": [1, 1, 1, 1], "width": 16},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": 128,
                     "heads": 4, "layers": 2, "hf_tokenizer_name": "editflow-world"},
    }


def preprocess_config(image_size: int = 32) -> dict:
    return {"size": image_size, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "interpolation": "bicubic", "resize_mode": "shortest"}


def pretrained_weights(model_name: str, tag: str, allow_download: bool = False) -> tuple[str, dict]:
    """(local weights file, open_clip's pretrained config) of an open_clip ``pretrained`` tag: the
    tag's Hugging Face hub copy from the local cache, or fetched once when ``allow_download``."""
    from huggingface_hub import hf_hub_download
    from open_clip.pretrained import HF_WEIGHTS_NAME, get_pretrained_cfg

    from editflow.errors import EditflowError

    cfg = get_pretrained_cfg(model_name, tag)
    if not cfg or not cfg.get("hf_hub"):
        raise EditflowError(f"open_clip knows no hub copy of {model_name}:{tag} (see open_clip.list_pretrained()); "
                            "pass NAME:/path/to/weights or a local open_clip folder")
    hub = cfg["hf_hub"]  # "org/name/" (the default file name) or "org/name/file"
    repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else hub.rsplit("/", 1)
    for name in [filename] if filename else ["open_clip_model.safetensors", HF_WEIGHTS_NAME]:
        try:
            return hf_hub_download(repo, name, local_files_only=not allow_download), cfg
        except Exception:  # not cached (offline), or not this file name: try the next
            continue
    how = "" if allow_download else "; fetch them once with --allow-download"
    raise EditflowError(f"judge weights {model_name}:{tag} are not in the Hugging Face cache ({repo}){how}")


class Evaluator:
    """CLIP score and zero-shot detection with an open_clip model.

    ``images`` everywhere are PIL images or a float tensor ``(N, 3, H, W)`` in ``[-1, 1]`` (on
    any device). The model runs on ``device`` in float32 (the judge is small next to the
    generator; on CUDA its matmuls run under float16 autocast); features, scores and
    probabilities come back as float32 tensors on the CPU, wherever the model ran.
    """

    def __init__(self, model, tokenizer, image_size: int, mean, std, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device, torch.float32)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._text_cache: dict[str, torch.Tensor] = {}

    def _autocast(self):
        """float16 autocast on CUDA; nothing elsewhere (the CPU runs the judge in float32)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", torch.float16)
        return contextlib.nullcontext()

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu") -> Evaluator:
        """Load an open_clip model saved as a local folder (the embedded evaluator's format)."""
        import open_clip

        path = Path(path)
        if not (path / OPEN_CLIP_CONFIG).is_file():
            raise FileNotFoundError(f"no open_clip evaluator at {path} (missing {OPEN_CLIP_CONFIG})")
        model = open_clip.create_model(f"local-dir:{path.resolve()}", device=device)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path.resolve()}")
        pp = json.loads((path / OPEN_CLIP_CONFIG).read_text()).get("preprocess_cfg", preprocess_config())
        return cls(model, tokenizer, pp["size"], pp["mean"], pp["std"], device)

    @classmethod
    def from_checkpoint(cls, model_name: str, weights: str | Path,
                        device: str | torch.device = "cpu") -> Evaluator:
        """A built-in open_clip architecture (e.g. ``ViT-L-14``) with local weights."""
        import open_clip

        if not Path(weights).is_file():
            raise FileNotFoundError(f"evaluator weights not found: {weights}")
        model = open_clip.create_model(model_name, pretrained=str(weights), device=device)
        cfg = model.visual.preprocess_cfg
        size = cfg["size"][0] if isinstance(cfg["size"], (list, tuple)) else cfg["size"]
        return cls(model, open_clip.get_tokenizer(model_name), size, cfg["mean"], cfg["std"], device)

    @classmethod
    def from_pretrained(cls, model_name: str, tag: str, device: str | torch.device = "cpu",
                        allow_download: bool = False) -> Evaluator:
        """An open_clip ``pretrained`` tag (``ViT-L-14`` + ``openai``) from the local Hugging Face
        cache, or fetched from the hub once when ``allow_download`` (:func:`pretrained_weights`).
        The tag's own settings (QuickGELU for OpenAI's weights, normalisation) come with it."""
        import open_clip

        path, cfg = pretrained_weights(model_name, tag, allow_download)
        model = open_clip.create_model(model_name, pretrained=path, device=device,
                                       force_quick_gelu=bool(cfg.get("quick_gelu")))
        pp = model.visual.preprocess_cfg
        size = pp["size"][0] if isinstance(pp["size"], (list, tuple)) else pp["size"]
        return cls(model, open_clip.get_tokenizer(model_name), size, cfg.get("mean", pp["mean"]),
                   cfg.get("std", pp["std"]), device)

    # -- features ---------------------------------------------------------------------------
    def _prepare(self, images) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            arr = np.stack([np.asarray(im.convert("RGB"), np.float32) for im in images]) / 127.5 - 1.0
            images = torch.from_numpy(arr).permute(0, 3, 1, 2)
        x = (images.detach().to("cpu", torch.float32) + 1) / 2
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                              antialias=True, align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    def image_features(self, images, batch: int = 256) -> torch.Tensor:
        x = self._prepare(images)
        with torch.no_grad(), self._autocast():
            feats = [self.model.encode_image(x[i:i + batch].to(self.device)).float().cpu()
                     for i in range(0, len(x), batch)]
        return F.normalize(torch.cat(feats), dim=-1)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            with torch.no_grad(), self._autocast():
                tokens = self.tokenizer(missing).to(self.device)
                feats = F.normalize(self.model.encode_text(tokens).float().cpu(), dim=-1)
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[t] for t in texts])

    # -- metrics ----------------------------------------------------------------------------
    def clip_score(self, images, prompts: list[str], features: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image CLIPScore ``100 * max(cos, 0)`` against its own prompt (``features``: the
        images' :meth:`image_features`, when the caller has them already)."""
        feats = self.image_features(images) if features is None else features
        cos = (feats * self.text_features(prompts)).sum(-1)
        return 100 * cos.clamp(min=0)

    def classify(self, images, class_prompts: list[str]) -> torch.Tensor:
        """Zero-shot class probabilities ``(N, len(class_prompts))``."""
        scale = self.model.logit_scale.exp().float().cpu()
        logits = scale * self.image_features(images) @ self.text_features(class_prompts).T
        return logits.softmax(-1)

    def detect(self, images, spec: WorldSpec, family: str) -> list[str]:
        """Zero-shot label of each image within a concept family of the embedded world."""
        concepts = spec.family(family)
        probs = self.classify(images, [c.prompt for c in concepts])
        return [concepts[i].name for i in probs.argmax(-1).tolist()]
