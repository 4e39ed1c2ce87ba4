"""Training of the embedded open_clip evaluator.

Two losses on freshly rendered world images (a seed range disjoint from the generator's):

* CLIP's symmetric contrastive loss between images and their captions (Radford et al. 2021,
  eq. in Fig. 3), so CLIP score means what it means for real CLIP;
* a zero-shot loss per concept family: cross-entropy of the image against the family's class
  prompts, the exact computation :meth:`Evaluator.classify` does at test time.

Images are augmented (blur, noise, small shifts, contrast) so the judge is not thrown by a
generator's softer images. The result is independent of the generator's weights.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from editflow.models.evaluator import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, preprocess_config, tiny_clip_config
from editflow.progress import progress, track
from editflow.training.common import Checkpoint, set_lr
from editflow.training.recipe import Recipe
from editflow.world import FAMILIES, WorldSpec, caption, render, sample_scene
from editflow.world.dataset import to_tensor

EVAL_SEED_OFFSET = 10_000_019  # scenes for the judge never coincide with the generator's


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise, shift and contrast jitter of a batch in [-1, 1]."""
    n = len(x)
    # separable Gaussian blur with a per-batch sigma in [0, 1] pixel
    sigma = float(torch.rand((), generator=gen)) * 1.0
    if sigma > 0.15:
        k = torch.arange(-2, 3, dtype=torch.float32)
        w = torch.exp(-(k**2) / (2 * sigma**2))
        w = (w / w.sum()).view(1, 1, 1, 5).repeat(3, 1, 1, 1)
        x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), w, groups=3)
        x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), w.transpose(2, 3), groups=3)
    shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    scale = 1 + 0.15 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    x = x * scale + 0.08 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    x = x + torch.randn(x.shape, generator=gen) * 0.06 * torch.rand(n, 1, 1, 1, generator=gen)
    return x.clamp(-1, 1)


def train_evaluator(spec: WorldSpec, recipe: Recipe, tokenizer, work_dir: Path) -> Path:
    """Train and save the evaluator as an open_clip ``local-dir`` folder under ``work_dir``."""
    import open_clip

    cfg = recipe.evaluator
    out = work_dir / "evaluator"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model_cfg = tiny_clip_config(len(tokenizer), tokenizer.model_max_length, spec.image_size)
    (out / OPEN_CLIP_CONFIG).write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": preprocess_config(spec.image_size)}, indent=2))
    model = open_clip.create_model(f"local-dir:{out.resolve()}", load_weights=False)
    tok = open_clip.get_tokenizer(f"local-dir:{out.resolve()}")

    rng = random.Random(recipe.seed + EVAL_SEED_OFFSET)
    gen = torch.Generator().manual_seed(recipe.seed + EVAL_SEED_OFFSET)
    n_pool = max(cfg.batch, recipe.dataset_size // 2)
    scenes = [sample_scene(rng, spec) for _ in range(n_pool)]
    images = np.stack([np.asarray(render(s, spec)) for s in track(scenes, "render judge set")])

    class_prompts = {f: [c.prompt for c in spec.family(f)] for f in FAMILIES}
    class_ids = {f: {c.name: i for i, c in enumerate(spec.family(f))} for f in FAMILIES}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    ckpt = Checkpoint(work_dir / "evaluator.ckpt")
    start = ckpt.load(rng, gen, model=model, opt=opt) if ckpt.exists() else 0
    model.train()
    bar = progress(cfg.steps, "evaluator", initial=start)
    for step in range(start, cfg.steps):
        set_lr(opt, cfg.lr, step, cfg.steps, cfg.warmup)
        idx = torch.randint(n_pool, (cfg.batch,), generator=gen).tolist()
        x = augment(to_tensor(images[idx]), gen)
        batch_scenes = [scenes[i] for i in idx]
        texts = [caption(s, rng, spec) for s in batch_scenes]
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tok(texts)), dim=-1)
        scale = model.logit_scale.exp()
        logits = scale * img @ txt.T
        labels = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        for f in FAMILIES:
            prompts = F.normalize(model.encode_text(tok(class_prompts[f])), dim=-1)
            target = torch.tensor([class_ids[f][s.labels()[f]] if s.shows(f) else -100 for s in batch_scenes])
            loss = loss + F.cross_entropy(scale * img @ prompts.T, target, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0:
            ckpt.save(step + 1, rng, gen, model=model, opt=opt)
    bar.close()
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / OPEN_CLIP_WEIGHTS)
    (out / "done").write_text("ok\n")
    return out
