"""A real ``CLIPTokenizer`` for the embedded world's vocabulary.

Stable Diffusion pipelines expect a CLIP byte-pair tokenizer. We build one whose ``vocab.json``
and ``merges.txt`` make every world word a single token (so a concept has one embedding
position, as "cat" does in SD), while single characters stay in the vocabulary so an unknown
word falls back to characters instead of ``<|endoftext|>``.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
EOW = "</w>"


def _symbols(word: str) -> list[str]:
    return [*word[:-1], word[-1] + EOW]


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair merge of ``word`` with ``ranks``, the same rule CLIP and ``tokenizers`` apply."""
    parts = _symbols(word)
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    return parts


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merges in which each of ``words`` encodes to exactly one token.

    Merges are appended until every word collapses: a merge added at the end has the lowest
    priority, so it cannot change how an already-collapsing word is split.
    """
    words = sorted({w.lower() for w in words})
    ranks: dict[tuple[str, str], int] = {}
    merges: list[str] = []
    for word in words:
        while len(parts := _bpe(word, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(f"{pair[0]} {pair[1]}")
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = [*chars, *(c + EOW for c in chars)]
    for m in merges:
        a, b = m.split(" ")
        tokens.append(a + b)
    vocab: dict[str, int] = {}
    for t in [*tokens, BOS, EOS]:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def save_tokenizer(words: list[str], out_dir: str | Path, model_max_length: int) -> CLIPTokenizer:
    """Write ``vocab.json``/``merges.txt`` for ``words`` and return the loaded tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (out / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=str(out / "vocab.json"), merges=str(out / "merges.txt"),
                        model_max_length=model_max_length)
    tok.save_pretrained(out)
    return CLIPTokenizer.from_pretrained(out)
