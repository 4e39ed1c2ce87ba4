"""`editflow world train` on a tiny recipe: every stage runs, exports a loadable pipeline and
evaluator, and an interrupted UNet stage resumes to the same weights as an uninterrupted one."""

import dataclasses

import pytest
import torch

from editflow.models.components import EmbeddedArchitecture, build_train_scheduler, build_unet
from editflow.training.embedded import train_embedded
from editflow.training.generator import train_unet
from editflow.training.recipe import Recipe, StageConfig


def tiny_recipe(**kw) -> Recipe:
    stage = lambda steps: StageConfig(steps, 8, 1e-3, warmup=1, checkpoint_every=1)  # noqa: E731
    return Recipe(
        dataset_size=48,
        architecture=EmbeddedArchitecture(text_hidden=32, text_layers=1, text_heads=2, vae_channels=(8, 16),
                                          unet_channels=(16, 32, 32), unet_heads=2),
        text_encoder=stage(2), vae=stage(2), unet=stage(4), evaluator=stage(2), **kw)


def test_recipe_yaml_is_the_default_recipe():
    assert Recipe.from_yaml("configs/world/embedded.yaml") == Recipe()


def test_recipe_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("seed: 1\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        Recipe.from_yaml(bad)


def test_tiny_training_end_to_end(tmp_path, world):
    from editflow.models.evaluator import Evaluator
    from editflow.models.pipeline import GenerationConfig, generate, load_pipeline

    work, out = tmp_path / "work", tmp_path / "out"
    train_embedded(world, tiny_recipe(), work, out, unet_max_steps=2)
    assert not (out / "pipeline").exists()  # stopped inside the UNet stage
    assert torch.load(work / "unet.ckpt", weights_only=False)["step"] == 2
    train_embedded(world, tiny_recipe(), work, out)  # resumes
    pipe = load_pipeline(out / "pipeline")
    from diffusers import DiffusionPipeline  # as the docs load it: the text encoder in float32 too

    plain = DiffusionPipeline.from_pretrained(out / "pipeline", safety_checker=None, feature_extractor=None)
    assert plain.text_encoder.dtype == plain.unet.dtype == torch.float32
    img = generate(pipe, ["a red star"], [0], GenerationConfig(steps=2))[0]
    assert img.size == (32, 32)
    judge = Evaluator.from_dir(out / "evaluator")
    assert judge.detect([img], world, "object")[0] in {c.name for c in world.objects}


def test_unet_resume_matches_uninterrupted_run(tmp_path, world):
    import random

    from transformers import CLIPTokenizer

    from editflow.models.components import build_text_encoder
    from editflow.models.tokenizer import save_tokenizer
    from editflow.world import sample_scene

    recipe = tiny_recipe()
    arch = recipe.architecture
    tok = save_tokenizer(world.vocabulary(), tmp_path / "tok", arch.max_length)
    torch.manual_seed(0)
    te = build_text_encoder(arch, CLIPTokenizer.from_pretrained(tmp_path / "tok")).eval()
    rng = random.Random(0)
    scenes = [sample_scene(rng, world) for _ in range(16)]
    latents = torch.randn(16, arch.latent_channels, arch.latent_size, arch.latent_size)

    def run(work, interrupts):
        torch.manual_seed(1)
        init = build_unet(arch).state_dict()
        for max_steps in interrupts:
            unet = build_unet(arch)
            unet.load_state_dict(init)
            ema = train_unet(world, scenes, latents, tok, te, unet, build_train_scheduler(arch), recipe, work,
                             max_steps=max_steps)
        return unet.state_dict(), ema.state_dict()["shadow_params"]

    straight, straight_ema = run(tmp_path / "a", [None])
    resumed, resumed_ema = run(tmp_path / "b", [1, 2, None])
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    for a, b in zip(straight_ema, resumed_ema):
        assert torch.equal(a, b)
    assert dataclasses.asdict(recipe)["unet"]["steps"] == 4
