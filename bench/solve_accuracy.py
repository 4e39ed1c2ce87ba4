"""Accuracy of editflow's UCE against a float64 reference solve, beside the float32-inverse baseline.

    python bench/solve_accuracy.py [--concepts 1000] [--layers 3]

Same SD 1.5-architecture model and workload as ``bench/erase_speed.py``. For the first
``--layers`` projections: the condition number of the d x d system, and the relative Frobenius
error of editflow's weights and of the inverse-based baseline's against
``torch.linalg.solve`` in float64 on the same embeddings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import CLIPTokenizer

sys.path.insert(0, str(Path(__file__).parent))
import erase_speed as bench  # noqa: E402

from editflow.edits import ConceptSpec, EraseRequest, get_method  # noqa: E402
from editflow.edits.conditioning import encode, positions  # noqa: E402
from editflow.edits.targets import TargetSpec  # noqa: E402
from editflow.models.pipeline import embedded_dir  # noqa: E402
from editflow.models.reference import build_pipeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", type=int, default=1000)
    ap.add_argument("--preserve", type=int, default=20)
    ap.add_argument("--layers", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = CLIPTokenizer.from_pretrained(Path(embedded_dir()) / "pipeline" / "tokenizer")
    pipe = build_pipeline("sd15", tok)
    n = args.concepts
    keep = bench.concepts(n + args.preserve)[-args.preserve:]
    req = EraseRequest([ConceptSpec(w) for w in bench.concepts(n)], keep, templates=("{}",), token_policy="last")
    uce = get_method("uce")
    patch = uce.compute(pipe, req, uce.config_class())
    baseline = bench.per_layer_inverse_uce(pipe, req)
    words = [c.name for c in req.concepts]
    c_all = encode(pipe, words + [c.anchor for c in req.concepts] + keep).double()
    pos = lambda text: positions(tok, text, text, "last", c_all.shape[1])[0]  # noqa: E731
    c_e = torch.stack([c_all[k, pos(w)] for k, w in enumerate(words)])
    c_t = torch.stack([c_all[n + k, pos(w)] for k, w in enumerate(words)])
    c_p = torch.stack([c_all[2 * n + k, pos(w)] for k, w in enumerate(keep)])
    print("| layer | condition number | editflow rel. error | baseline rel. error |")
    print("|---|---:|---:|---:|")
    for name, module in list(TargetSpec().find(pipe.unet).items())[:args.layers]:
        W = module.weight.detach().double()
        lhs = 0.5 * torch.eye(W.shape[1], dtype=torch.float64) + c_e.T @ c_e + c_p.T @ c_p
        rhs = 0.5 * W + (W @ c_t.T) @ c_e + (W @ c_p.T) @ c_p
        ref = torch.linalg.solve(lhs, rhs.T).T  # W_new lhs = rhs, lhs symmetric
        ours = W + patch.edit.delta(name).double()
        err_ours = ((ours - ref).norm() / ref.norm()).item()
        err_base = ((baseline[name].double() - ref).norm() / ref.norm()).item()
        print(f"| {name} | {torch.linalg.cond(lhs).item():.2e} | {err_ours:.1e} | {err_base:.1e} |")


if __name__ == "__main__":
    main()
