"""The MLflow pyfunc model of a registered patch (an MLflow "model from code": no pickle).

Loading it loads the base model it names (``model_config["base"]``: ``embedded`` or a local
diffusers folder / cached hub id), refuses a base whose hash differs from the patch's, and
applies the patch. ``predict`` takes prompts (a list, or a DataFrame with a ``prompt`` column)
and returns uint8 images ``(N, H, W, 3)``; params ``seed`` (image i uses seed + i), ``steps``,
``guidance``, ``device`` and ``dtype``.

The model loads where ``model_config`` says (``device``, ``dtype``), else where ``EDITFLOW_DEVICE``
/ ``EDITFLOW_DTYPE`` say, else ``auto`` (CUDA in float16 when there is one, the CPU in float32).
A ``predict`` whose ``device`` / ``dtype`` params name another placement loads base + patch again
there (and keeps that placement for the next calls).

    model = mlflow.pyfunc.load_model("models:/erase-star@champion", model_config={"device": "cuda"})
    images = model.predict(["a red star"], params={"seed": 0, "dtype": "bfloat16"})

The logged model carries the ``editflow`` package as code (``code/editflow``: no caches or
evaluator weights; the embedded pipeline's weights when the base is ``embedded``), so a fresh
environment (``mlflow models serve`` / ``build-docker``) imports that copy; its requirements are
the pinned third-party packages editflow needs (:func:`registry.register.serve_requirements`),
never a package named "editflow" from an index.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class PatchedPipeline(PythonModel):
    def load_context(self, context):
        from editflow.edits import Patch

        config = context.model_config or {}
        base = config.get("base", "embedded")
        self.base = None if base == "embedded" else base
        self.patch = Patch.load(context.artifacts["patch"])
        self.pipe = self.applied = self.place = None
        self._load(config.get("device"), config.get("dtype"))

    def _load(self, device: str | None, dtype: str | None) -> None:
        """Base + patch on ``device`` in ``dtype`` (names; ``None``: the environment's, else auto).

        A fresh load rather than a move: the patch is applied once, to weights already in their
        final precision, exactly as on the first load."""
        from editflow.models.device import Placement
        from editflow.models.pipeline import load_pipeline

        place = Placement.resolve(device, dtype)
        if self.pipe is not None and place == self.place:
            return
        self.pipe = self.applied = None  # let the old copy go first (a failed load is retried by the next call)
        self.place = place
        pipe = load_pipeline(self.base, device=place.device, dtype=place.dtype)
        self.applied = self.patch.apply(pipe)  # checks the base hash; stays applied
        self.pipe = pipe

    def predict(self, context, model_input, params=None):
        from editflow.models.pipeline import GenerationConfig, generate

        params = params or {}
        # params name another placement than the loaded one (each, when given, wins): load base + patch there
        self._load(params.get("device") or str(self.place.device),
                   params.get("dtype") or str(self.place.dtype).removeprefix("torch."))
        if hasattr(model_input, "columns"):
            column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
            prompts = [str(p) for p in model_input[column]]
        else:
            prompts = [str(p) for p in model_input]
        seed = int(params.get("seed", 0))
        config = GenerationConfig(steps=int(params.get("steps", 25)), guidance=float(params.get("guidance", 5.0)))
        images = generate(self.pipe, prompts, [seed + i for i in range(len(prompts))], config)
        return np.stack([np.asarray(im.convert("RGB"), np.uint8) for im in images])


mlflow.models.set_model(PatchedPipeline())
