"""The MLflow pyfunc model of a registered patch (an MLflow "model from code": no pickle).

Loading it loads the base model it names (``model_config["base"]``: ``embedded`` or a local
diffusers folder / cached hub id), refuses a base whose hash differs from the patch's, and
applies the patch. ``predict`` takes prompts (a list, or a DataFrame with a ``prompt`` column)
and returns uint8 images ``(N, H, W, 3)``; params ``seed`` (image i uses seed + i), ``steps``,
``guidance``.

    model = mlflow.pyfunc.load_model("models:/erase-star@champion")
    images = model.predict(["a red star"], params={"seed": 0})

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
        from editflow.models.pipeline import load_pipeline

        base = (context.model_config or {}).get("base", "embedded")
        self.pipe = load_pipeline(None if base == "embedded" else base)
        self.patch = Patch.load(context.artifacts["patch"])
        self.applied = self.patch.apply(self.pipe)  # checks the base hash; stays applied

    def predict(self, context, model_input, params=None):
        from editflow.models.pipeline import GenerationConfig, generate

        params = params or {}
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
