"""Learned token embeddings: storage (diffusers' textual-inversion format) and use in a pipeline.

A file holds one key, the token, with its ``(vectors, d)`` embedding, as
``pipe.load_textual_inversion(path)`` in diffusers (and A1111 via conversion) expects; editflow's
own facts (concept, init word, base hash, loss) ride in the safetensors header.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from editflow import tensorfile
from editflow.errors import EditflowError

FORMAT = "editflow-tokens/1"


def check_token_name(token: str, what: str = "token") -> str:
    """Refuse a token name that cannot stand for one new vocabulary entry: empty, holding
    whitespace (the tokenizer would split it) or undecodable bytes."""
    if not isinstance(token, str) or not token.strip():
        raise EditflowError(f"{what} {token!r}: a learned token needs a name, e.g. '<my-concept>'")
    if any(ch.isspace() for ch in token):
        raise EditflowError(f"{what} {token!r}: a token is one word; use '-' or '_' instead of spaces")
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        raise EditflowError(f"{what} {ascii(token)} is not valid UTF-8 text") from None
    return token


@dataclass
class LearnedTokens:
    token: str  # e.g. "<star>"; multi-vector tokens expand to "<star> <star>_1 ..." as in diffusers
    vectors: torch.Tensor  # (n, d)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        check_token_name(self.token)
        if not self.vectors.is_floating_point():
            raise EditflowError(f"the embedding of {self.token} is {self.vectors.dtype}, not floating point")
        if self.vectors.ndim != 2:
            raise ValueError(f"token embeddings must be (vectors, dim), got {tuple(self.vectors.shape)}")
        if not torch.isfinite(self.vectors).all():
            raise EditflowError(f"the embedding of {self.token} is not finite")

    def prompt(self, template: str = "{}") -> str:
        return template.format(self.token)

    def save(self, path: str | Path) -> Path:
        return tensorfile.write(path, {self.token: self.vectors.detach().float()},
                                {"format": FORMAT, "metadata": json.dumps(self.metadata, sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path) -> LearnedTokens:
        tensors, meta = tensorfile.read(path, "token embedding")
        keys = list(tensors)
        if len(keys) != 1:
            raise EditflowError(f"{path} holds {len(keys)} tensors; a textual-inversion file holds one token")
        token = keys[0]
        vec = tensors[token]
        try:
            metadata = json.loads(meta.get("metadata", "{}"))
        except ValueError:
            raise EditflowError(f"{path}: the header's 'metadata' is not valid JSON") from None
        if vec.ndim not in (1, 2) or not isinstance(metadata, dict):
            raise EditflowError(f"{path}: not a textual-inversion embedding (tensor {tuple(vec.shape)})")
        return cls(token, vec if vec.ndim == 2 else vec[None], metadata)


def _check_free(pipe, token: str) -> None:
    vocab = pipe.tokenizer.get_vocab()
    if token in vocab or f"{token}</w>" in vocab:  # CLIP's BPE stores whole words with </w>
        raise EditflowError(f"token {token!r} is already in the tokenizer's vocabulary; pick another --token")


@contextmanager
def learned_tokens(pipe, *tokens: LearnedTokens) -> Iterator[None]:
    """The pipeline understands each ``token`` in prompts inside the block (diffusers'
    ``load_textual_inversion``); the tokenizer and text encoder are restored afterwards."""
    if not tokens:
        yield
        return
    d = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    for t in tokens:
        if t.vectors.shape[1] != d:
            raise EditflowError(f"{t.token} has {t.vectors.shape[1]}-d embeddings; this text encoder "
                                f"reads {d}-d (made for another base model)")
        _check_free(pipe, t.token)
    if len({t.token for t in tokens}) != len(tokens):
        raise EditflowError("two learned embeddings share a token name")
    te = pipe.text_encoder
    vocab_size = te.config.vocab_size
    pipe.load_textual_inversion([{t.token: t.vectors.to(te.device, te.dtype)} for t in tokens],
                                token=[t.token for t in tokens])
    try:
        yield
    finally:
        pipe.unload_textual_inversion()
        te.config.vocab_size = vocab_size  # diffusers 0.42 shrinks the table but leaves the config grown


def token_ids(pipe, token: str, n: int) -> list[int]:
    names = [token] + [f"{token}_{i}" for i in range(1, n)]
    return pipe.tokenizer.convert_tokens_to_ids(names)


@contextmanager
def trainable_token(pipe, token: str, init: torch.Tensor) -> Iterator[torch.nn.Parameter]:
    """Load ``token`` with embedding ``init`` (n, d) and yield a parameter that replaces its rows
    in the text encoder's input embeddings (a forward hook): gradients reach only the parameter.

    The parameter is float32 on the embedding table's device (master weights); the hook casts it to
    the table's dtype, so a float16/bfloat16 text encoder trains a float32 token."""
    embedding = pipe.text_encoder.get_input_embeddings()
    param = torch.nn.Parameter(init.detach().to(embedding.weight.device, torch.float32).clone())
    with learned_tokens(pipe, LearnedTokens(token, init.detach().float().cpu())):
        ids = torch.tensor(token_ids(pipe, token, len(init)))
        embedding = pipe.text_encoder.get_input_embeddings()

        def hook(module, args, out):
            input_ids = args[0]
            hit = (input_ids[..., None] == ids.to(input_ids.device)).to(out.dtype)  # (B, L, n)
            if not hit.any():
                return out
            replaced = hit @ param.to(out.dtype)  # (B, L, d)
            keep = 1 - hit.sum(-1, keepdim=True)
            return out * keep + replaced

        handle = embedding.register_forward_hook(hook)
        try:
            yield param
        finally:
            handle.remove()
