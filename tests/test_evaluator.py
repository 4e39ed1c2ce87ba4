"""The shipped open_clip evaluator: loads through open_clip's API and meets its accuracy bar."""

import json

import pytest
import torch
from safetensors.torch import load_file

from editflow.evaluation.world_check import EVALUATOR_BAR, evaluator_accuracy
from editflow.models.evaluator import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, Evaluator
from editflow.models.pipeline import embedded_dir
from editflow.world import FAMILIES, render, sample_batch


def test_loads_through_open_clip_local_dir():
    import open_clip

    path = (embedded_dir() / "evaluator").resolve()
    model = open_clip.create_model(f"local-dir:{path}")
    assert isinstance(model, open_clip.CLIP)
    cfg = json.loads((path / OPEN_CLIP_CONFIG).read_text())["model_cfg"]
    assert model.visual.image_size in (cfg["vision_cfg"]["image_size"], (cfg["vision_cfg"]["image_size"],) * 2)
    shipped = load_file(path / OPEN_CLIP_WEIGHTS)
    state = model.state_dict()
    assert shipped.keys() == state.keys()
    assert all(torch.equal(shipped[k], state[k]) for k in shipped)  # the weights really loaded


def test_zero_shot_accuracy_meets_bar_per_family(judge, world):
    scores = evaluator_accuracy(judge, world, per_class=20, seed=99)
    for family in FAMILIES:
        assert scores[family].accuracy >= EVALUATOR_BAR, (family, scores[family].to_dict())


def test_clip_score_prefers_the_true_caption(judge, world):
    batch = sample_batch(world, 32, seed=5)
    true = judge.clip_score(batch.images, batch.captions)
    shuffled = judge.clip_score(batch.images, batch.captions[1:] + batch.captions[:1])
    assert ((true >= 0) & (true <= 100)).all()
    assert true.mean() > shuffled.mean() + 5


def test_pil_and_tensor_inputs_agree(judge, world):
    batch = sample_batch(world, 4, seed=6)
    pil = [render(s, world) for s in batch.scenes]
    assert torch.allclose(judge.image_features(pil), judge.image_features(batch.images), atol=1e-5)


def test_unknown_family_is_refused(judge, world):
    with pytest.raises(ValueError, match="valid: object, colour, style, identity"):
        judge.detect(sample_batch(world, 1, seed=0).images, world, "texture")


def test_missing_evaluator_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no open_clip evaluator"):
        Evaluator.from_dir(tmp_path)
