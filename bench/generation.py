"""Generation throughput of the embedded model: batched vs one image at a time, side by side.

    python bench/generation.py [--images 64] [--steps 25]

Prints images/s for each batch size and the speed-up of batching over batch 1, measured in one
run on the same machine. Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from editflow.models.pipeline import GenerationConfig, generate, load_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    prompts = ["a red star by kasimir"] * args.images
    seeds = list(range(args.images))
    generate(pipe, prompts[:2], seeds[:2], GenerationConfig(steps=2))  # warm-up
    rates = {}
    for batch in (1, 16, 64):
        n = min(args.images, 16) if batch == 1 else args.images  # batch 1 is slow: fewer images
        t = time.perf_counter()
        generate(pipe, prompts[:n], seeds[:n], GenerationConfig(steps=args.steps, batch=batch))
        rates[batch] = n / (time.perf_counter() - t)
        print(f"batch {batch:3d}: {rates[batch]:7.2f} images/s ({args.steps} steps, CFG)")
    for batch in (16, 64):
        print(f"speed-up batch {batch} vs batch 1: {rates[batch] / rates[1]:.1f}x")


if __name__ == "__main__":
    main()
