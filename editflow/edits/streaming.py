"""Encode an erase request batch by batch and fold it into edit statistics.

Embeddings are folded into :class:`~editflow.edits.closed_form.EditStatistics` as they are
encoded, so memory stays at a few d x d matrices whatever the number of concepts; a bounded
reservoir sample is kept for the gate's calibration.

The preserve part depends only on the base model's text encoders and the preserved prompts, not
on what is erased, so it is cached as sufficient statistics (``P = Σ c cᵀ``, its count and the
sample) per base model (MACE, Lu et al. CVPR 2024, keeps such caches): a
:class:`PreserveCache` keyed by the prompts, the token policy and a functional fingerprint of
the encoders (their features of a probe prompt).

With the ``last`` token policy only one position per prompt is read, and CLIP encoders are
causal, so prompts are padded to their batch's longest length instead of the model's 77 tokens.

Features, statistics and samples live on :func:`~editflow.edits.conditioning.feature_device`
(float32 features, float64 statistics); the cache stores them on the CPU. Its key includes the
probe prompt's features, so statistics of a model loaded in another dtype are kept apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from editflow.edits.closed_form import EditStatistics
from editflow.edits.conditioning import (
    TokenPolicy,
    concept_span,
    encode,
    encode_features,
    feature_device,
    float32_encoders,
    is_clip_family,
    positions,
    token_count,
)
from editflow.edits.request import EraseRequest, erase_pairs, implied_pairs, preserve_pairs


@dataclass
class StreamedSet:
    """Statistics plus bounded samples of the erase and preserve embeddings (for the gate)."""

    stats: EditStatistics
    erase_sample: torch.Tensor
    preserve_sample: torch.Tensor


@dataclass
class PreserveStatistics:
    gram: torch.Tensor  # P = Σ c cᵀ (float64, d x d)
    count: int
    sample: torch.Tensor  # (<= sample_size, d) float32


class _Reservoir:
    def __init__(self, size: int, seed: int):
        self.size, self.rng, self.items, self.seen = size, random.Random(seed), [], 0

    def add(self, rows: torch.Tensor) -> None:
        for row in rows:
            self.seen += 1
            if len(self.items) < self.size:
                self.items.append(row)
            else:
                j = self.rng.randrange(self.seen)
                if j < self.size:
                    self.items[j] = row

    def tensor(self, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.stack(self.items) if self.items else torch.zeros(0, dim, device=device)


def _encoder(pipe, short: bool):
    """``encode(prompts, length)``: full-length features, or prefix features when ``short``."""
    if short:
        return lambda prompts, length: encode_features(pipe, prompts, length=length)
    return lambda prompts, length: encode(pipe, prompts)


def _once_each(enc, prompts: list[str], length):
    """``enc(prompts, length)`` with each distinct prompt encoded once: an erase set's anchored
    prompts repeat (every synonym in a template shares one; UCE's workload anchors every concept
    to the empty prompt), and the text encoder is most of a large erasure's time."""
    unique = list(dict.fromkeys(prompts))
    if len(unique) == len(prompts):
        return enc(prompts, length)
    where = {p: i for i, p in enumerate(unique)}
    return enc(unique, length)[[where[p] for p in prompts]]


def stream_statistics(pipe, request: EraseRequest, batch: int = 64, sample_size: int = 4096,
                      targets_fn=None, guidance: float = 0.0, preserve_context: bool = False,
                      cache: PreserveCache | None = None, progress=None) -> StreamedSet:
    """Encode the expanded prompts batch by batch and fold them into statistics.

    ``targets_fn(prompts, concept_words, c)`` may replace the default target embeddings
    (``a`` = anchor/empty prompt's features at the same positions). With ``guidance`` η > 0 the
    target steps past the neutral point, away from the concept: ``c* = a - η (c - a)``, the
    negative guidance of ESD (Gandikota et al., ICCV 2023, eq. 3) carried from noise predictions
    to the text features that keys and values read (η = 0: plain alignment, as UCE publishes).
    With ``preserve_context`` the positions before the concept in erase prompts and every
    position of preserve prompts join the preserve set (context tokens such as ``<bos>`` or
    "a photo of" must not change); without it, preserve prompts contribute their concept
    positions only, as UCE publishes. A concept's implied prompts
    (:func:`~editflow.edits.request.implied_pairs`) join the erase set with their anchored prompt's
    features as targets, whatever ``targets_fn`` gives the named ones.

    Text encoders loaded in float16/bfloat16 compute in float32 meanwhile
    (:func:`~editflow.edits.conditioning.float32_encoders`).
    """
    with float32_encoders(pipe):
        return _stream_statistics(pipe, request, batch, sample_size, targets_fn, guidance, preserve_context,
                                  cache, progress)


def _stream_statistics(pipe, request: EraseRequest, batch: int, sample_size: int, targets_fn, guidance: float,
                       preserve_context: bool, cache: PreserveCache | None, progress) -> StreamedSet:

    tok = pipe.tokenizer
    short = request.token_policy is TokenPolicy.last and is_clip_family(pipe)
    enc = _encoder(pipe, short)
    stats: EditStatistics | None = None
    keep_e, keep_p = _Reservoir(sample_size, 0), _Reservoir(sample_size, 1)
    pairs = erase_pairs(request)
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        length = token_count(pipe, [p for p, _, _ in chunk] + [q for _, q, _ in chunk]) if short else None
        c = _once_each(enc, [p for p, _, _ in chunk], length)
        t = (targets_fn([p for p, _, _ in chunk], [w for _, _, w in chunk], c) if targets_fn
             else _once_each(enc, [q for _, q, _ in chunk], length))
        t = t[:, :c.shape[1]]
        if guidance:
            t = t + guidance * (t - c)
        stats = stats or EditStatistics.zeros(c.shape[-1], c.device)
        rows_c, rows_t, context = [], [], []
        for k, (prompt, _, word) in enumerate(chunk):
            idx = positions(tok, prompt, word, request.token_policy, c.shape[1])
            rows_c.append(c[k, idx])
            rows_t.append(t[k, idx])
            if preserve_context:
                context.append(c[k, :concept_span(tok, prompt, word)[0]])
        rc, rt = torch.cat(rows_c), torch.cat(rows_t)
        stats.add_erase(rc, rt)
        keep_e.add(rc)
        if context:
            stats.add_preserve(torch.cat(context))
            keep_p.add(torch.cat(context))
        if progress:
            progress(len(chunk))
    implied = implied_pairs(request)
    for i in range(0, len(implied), batch):
        chunk = implied[i:i + batch]
        c, t = encode(pipe, [p for p, _, _ in chunk]), encode(pipe, [q for _, q, _ in chunk])
        stats = stats or EditStatistics.zeros(c.shape[-1], c.device)
        rows_c, rows_t = [], []
        for k, (prompt, anchored, word) in enumerate(chunk):
            src = positions(tok, prompt, word, request.token_policy, c.shape[1])
            dst = positions(tok, anchored, word, request.token_policy, t.shape[1])
            n = min(len(src), len(dst))
            rows_c.append(c[k, src[:n]])
            rows_t.append(t[k, dst[:n]])
        rc, rt = torch.cat(rows_c), torch.cat(rows_t)
        if guidance:
            rt = rt + guidance * (rt - rc)
        stats.add_erase(rc, rt)
        keep_e.add(rc)
        if progress:
            progress(len(chunk))
    kept = None
    key = None
    if request.preserve or request.kept:
        key = cache.key(pipe, request, preserve_context, sample_size) if cache else None
        kept = cache.get(key) if key else None
        if kept is None:
            kept = preserve_statistics(pipe, request, preserve_context, batch, sample_size, progress)
            if key:
                cache.put(key, kept)
        elif progress:
            progress(len(preserve_pairs(request)) + len(request.kept))
    if stats is None:
        stats = EditStatistics.zeros(kept.gram.shape[0] if kept else encode(pipe, [""]).shape[-1],
                                     feature_device(pipe))
    if kept is not None:
        stats.preserve_gram += kept.gram.to(stats.device)
        stats.n_preserve += kept.count
        sample = kept.sample.to(stats.device, torch.float32)
        keep_p.add(sample[torch.randperm(len(sample), generator=torch.Generator().manual_seed(2)).to(stats.device)])
    return StreamedSet(stats, keep_e.tensor(stats.dim, stats.device), keep_p.tensor(stats.dim, stats.device))


def preserve_statistics(pipe, request: EraseRequest, preserve_context: bool, batch: int = 64,
                        sample_size: int = 4096, progress=None) -> PreserveStatistics:
    """``P = Σ c cᵀ`` over the preserved prompts (all positions with ``preserve_context``, else the
    concept's positions under the token policy) and every position of the request's ``kept``
    prompts, with its count and a reservoir sample."""
    tok = pipe.tokenizer
    short = (not preserve_context and request.token_policy is TokenPolicy.last and is_clip_family(pipe))
    enc = _encoder(pipe, short)
    pres = preserve_pairs(request)
    batches = ([("pairs", pres[i:i + batch]) for i in range(0, len(pres), batch)]
               + [("kept", list(request.kept[i:i + batch])) for i in range(0, len(request.kept), batch)])
    gram, count, keep = None, 0, _Reservoir(sample_size, 1)
    for kind, chunk in batches:
        if kind == "kept":  # whole prompts: every position, whatever the policy
            c = encode(pipe, chunk)
            rows = c.reshape(-1, c.shape[-1])
        else:
            c = enc([p for p, _ in chunk], token_count(pipe, [p for p, _ in chunk]) if short else None)
            rows = (c.reshape(-1, c.shape[-1]) if preserve_context else
                    torch.cat([c[k, positions(tok, p, w, request.token_policy, c.shape[1])]
                               for k, (p, w) in enumerate(chunk)]))
        r64 = rows.to(torch.float64)
        gram = r64.T @ r64 if gram is None else gram + r64.T @ r64
        count += len(rows)
        keep.add(rows)
        if progress:
            progress(len(chunk))
    return PreserveStatistics(gram, count, keep.tensor(gram.shape[0], gram.device))


class PreserveCache:
    """Preserve statistics on disk, one safetensors file per (encoders, prompts, policy) key.

    Writes are atomic (temporary file, then rename); a corrupt entry is ignored and rewritten.
    """

    PROBE = "a photo of"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def key(self, pipe, request: EraseRequest, preserve_context: bool, sample_size: int) -> str:
        probe = encode(pipe, [self.PROBE])[0]
        h = hashlib.sha256()
        h.update(json.dumps({"preserve": list(request.preserve), "templates": list(request.templates),
                             "policy": request.token_policy.value, "context": preserve_context,
                             "sample": sample_size, "shape": list(probe.shape),
                             **({"kept": list(request.kept)} if request.kept else {})}, sort_keys=True).encode())
        h.update(probe.to("cpu", torch.float32).contiguous().numpy().round(4).tobytes())
        return h.hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"preserve-{key}.safetensors"

    def get(self, key: str) -> PreserveStatistics | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            t = load_file(str(path))
            return PreserveStatistics(t["gram"], int(t["count"].item()), t["sample"])
        except Exception:  # a truncated or foreign file: recompute
            return None

    def put(self, key: str, value: PreserveStatistics) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"gram": value.gram.cpu().contiguous(), "count": torch.tensor([value.count]),
                       "sample": value.sample.cpu().contiguous()}, tmp)
            os.replace(tmp, self.path(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.path(key)
