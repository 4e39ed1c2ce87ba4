"""Closed-form erasure speed on an SD 1.5-architecture model (random weights), side by side with a
straightforward per-layer, inverse-based UCE, for 1 / 10 / 100 / 1000 (/ 10000) concepts.

    python bench/erase_speed.py [--counts 1 10 100 1000 10000] [--arch sd15] [--preserve 20] [--baseline-max 1000]

Workload (UCE's reference setting): each concept erased towards the empty prompt at its last
token, ``--preserve`` concepts kept, one template ("{}"), UCE defaults (λ = 0.5, s_e = s_p = 1).
Both implementations start from the loaded pipeline and end with every layer's new weight (or
its factors) in hand:

* editflow: :class:`editflow.edits.uce.UCE` — short-sequence encoding (the ``last`` policy reads one
  causal position; each distinct prompt once), streamed d x d statistics, one float64 Cholesky
  solve and one factorisation for all 32 layers;
* baseline: encode every prompt at the full 77 tokens, then per layer accumulate the outer
  products concept by concept and multiply by ``torch.inverse`` of the d x d system, as the
  research code does.

Peak memory is the largest resident-set growth over the loaded model during each run (sampled
every 5 ms, after ``malloc_trim`` hands freed pages back to the OS). Prints a markdown table;
results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import threading
import time
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from editflow.edits import ConceptSpec, EraseRequest, get_method
from editflow.edits.conditioning import encode, positions
from editflow.edits.targets import TargetSpec
from editflow.models.pipeline import embedded_dir
from editflow.models.reference import build_pipeline
from editflow.world import DEFAULT_WORLD


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class PeakRSS:
    """Largest RSS growth (MB) while the block runs."""

    def __enter__(self):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed pages back, so growth is this block's own
        self.base = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())
        self.growth = self.peak - self.base


def concepts(n: int) -> list[str]:
    words = [w for w in DEFAULT_WORLD.vocabulary() if w not in ("a", "an")]
    # two-word names, then three-word ones once those run out (10,000 concepts need more than pairs)
    names = (" ".join(p) for k in (2, 3) for p in itertools.permutations(words, k))
    return list(itertools.islice(names, n))


def per_layer_inverse_uce(pipe, request: EraseRequest, lam=0.5, s_e=1.0, s_p=1.0) -> dict[str, torch.Tensor]:
    """The straightforward UCE (Gandikota et al. WACV 2024, eq. 6), layer by layer, with an inverse."""
    tok = pipe.tokenizer
    erase = [(c.name, c.anchor) for c in request.concepts]
    c_all = encode(pipe, [w for w, _ in erase] + [a for _, a in erase] + list(request.preserve))
    n = len(erase)
    pos = lambda text: positions(tok, text, text, "last", c_all.shape[1])[0]  # noqa: E731
    # a target is read at its concept's position (editflow's convention, so the results compare)
    c_e = [c_all[k, pos(w)] for k, (w, _) in enumerate(erase)]
    c_t = [c_all[n + k, pos(w)] for k, (w, _) in enumerate(erase)]
    c_p = [c_all[2 * n + k, pos(w)] for k, w in enumerate(request.preserve)]
    new = {}
    for name, m in TargetSpec().find(pipe.unet).items():
        W = m.weight.detach()
        mat1 = lam * W.clone()
        mat2 = lam * torch.eye(W.shape[1])
        for c, t in zip(c_e, c_t):
            v = W @ t
            mat1 += s_e * torch.outer(v, c)
            mat2 += s_e * torch.outer(c, c)
        for c in c_p:
            mat1 += s_p * torch.outer(W @ c, c)
            mat2 += s_p * torch.outer(c, c)
        new[name] = mat1 @ torch.inverse(mat2)
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--preserve", type=int, default=20)
    ap.add_argument("--baseline-max", type=int, default=1000, help="largest count the baseline runs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = CLIPTokenizer.from_pretrained(Path(embedded_dir()) / "pipeline" / "tokenizer")
    t = time.perf_counter()
    pipe = build_pipeline(args.arch, tok)
    n_params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(f"{args.arch}: UNet {n_params:.0f} M parameters, {len(TargetSpec().find(pipe.unet))} target "
          f"projections, built in {time.perf_counter() - t:.0f} s")
    keep = concepts(max(args.counts) + args.preserve)[-args.preserve:]
    uce = get_method("uce")
    print("| concepts | editflow s | editflow peak MB | baseline s | baseline peak MB | speed-up | max rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.counts:
        req = EraseRequest([ConceptSpec(w) for w in concepts(n)], keep, templates=("{}",), token_policy="last")
        with PeakRSS() as mem:
            t = time.perf_counter()
            patch = uce.compute(pipe, req, uce.config_class())
            ours = time.perf_counter() - t
        row = f"| {n} | {ours:.2f} | {mem.growth:.0f} |"
        if n <= args.baseline_max:
            with PeakRSS() as mem_b:
                t = time.perf_counter()
                ref = per_layer_inverse_uce(pipe, req)
                base = time.perf_counter() - t
            targets = TargetSpec().find(pipe.unet)
            diff = max(((targets[k].weight + patch.edit.delta(k) - W).norm() / W.norm()).item()
                       for k, W in ref.items())
            row += f" {base:.2f} | {mem_b.growth:.0f} | {base / ours:.1f}x | {diff:.1e} |"
        else:
            row += " - | - | - | - |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
