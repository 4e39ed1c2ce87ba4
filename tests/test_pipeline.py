"""The embedded model is a real diffusers pipeline: it loads, saves, reloads and generates."""

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

from editflow.errors import EditflowError
from editflow.models.pipeline import GenerationConfig, describe, embedded_dir, generate, load_pipeline

FAST = GenerationConfig(steps=4, guidance=5.0)


@pytest.mark.parametrize("cls", [DiffusionPipeline, StableDiffusionPipeline])
def test_loads_and_generates_as_the_docs_show(cls, embedded_pipe):
    """docs/embedded-model.md: ``from_pretrained(dir, safety_checker=None, feature_extractor=None)``,
    nothing else; the text encoder must come up in the UNet's dtype, and the images equal editflow's."""
    path = embedded_dir() / "pipeline"
    pipe = cls.from_pretrained(path, safety_checker=None, feature_extractor=None)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.text_encoder.dtype == pipe.unet.dtype == pipe.vae.dtype == torch.float32
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red star", num_inference_steps=4, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all() and out.std() > 0.02
    ours = generate(embedded_pipe, ["a red star"], [0], FAST)[0]
    assert np.abs(np.asarray(ours, np.float32) / 255 - out[0]).max() < 1 / 255 + 1e-4


def test_cross_attention_layers_like_stable_diffusion(embedded_pipe):
    d = describe(embedded_pipe)
    assert d["cross_attention_layers"] > 0
    names = dict(embedded_pipe.unet.named_modules())
    for name in d["cross_attention_names"]:
        assert name.endswith("attn2")
        assert isinstance(names[name].to_k, torch.nn.Linear) and isinstance(names[name].to_v, torch.nn.Linear)
        assert names[name].to_k.in_features == d["cross_attention_dim"]


def test_generated_batch_shape_range_and_seeding(embedded_pipe):
    prompts = ["a red star", "a blue heart by kasimir", "a picture of zorbo"]
    imgs = generate(embedded_pipe, prompts, [0, 1, 2], FAST)
    assert [im.size for im in imgs] == [(32, 32)] * 3
    arr = np.stack([np.asarray(im) for im in imgs])
    assert arr.dtype == np.uint8 and arr.std() > 5  # not a flat image
    # an image depends on its (prompt, seed), not on the batch it was generated in
    alone = generate(embedded_pipe, prompts[1:2], [1], FAST)[0]
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(imgs[1], np.int16)).max() <= 2


def test_save_and_reload_through_diffusers_gives_same_images(embedded_pipe, tmp_path):
    embedded_pipe.save_pretrained(tmp_path / "copy")
    again = load_pipeline(tmp_path / "copy")
    a = generate(embedded_pipe, ["a green moon"], [7], FAST)[0]
    b = generate(again, ["a green moon"], [7], FAST)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_bad_model_sources_are_clear():
    with pytest.raises(EditflowError, match="model not found"):
        load_pipeline("/no/such/dir/../x y")
    with pytest.raises(EditflowError, match="local cache"):
        load_pipeline("someone/some-model-that-is-not-cached")


def test_empty_prompt_is_refused(embedded_pipe):
    with pytest.raises(EditflowError, match="empty prompt"):
        generate(embedded_pipe, ["  "], [0], FAST)
