"""The vocabulary: fastai's special tokens first, then the training text's tokens by frequency.

Built from the *training* rows only (``Vocab.build``) and saved as JSON in every model folder.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["SPECIAL_TOKENS", "UNK_IDX", "PAD_IDX", "Vocab", "numericalize"]

# fastai's special tokens, in fastai's order (UNK=0, PAD=1, BOS=2, ...).
SPECIAL_TOKENS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]
UNK_IDX, PAD_IDX = 0, 1


class Vocab:
    """Token <-> id mapping; ids 0..8 are fastai's special tokens."""

    def __init__(self, itos: Sequence[str]):
        itos = list(itos)
        if itos[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with fastai's special tokens {SPECIAL_TOKENS}")
        if len(set(itos)) != len(itos):
            raise ValueError("vocabulary has duplicate tokens")
        self.itos = itos
        self.stoi = {t: i for i, t in enumerate(itos)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], max_vocab: int = 60000, min_freq: int = 2) -> "Vocab":
        """Most frequent tokens (ties broken alphabetically, so the vocab is deterministic)."""
        counts = Counter(t for toks in token_lists for t in toks)
        for t in SPECIAL_TOKENS:
            counts.pop(t, None)
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(SPECIAL_TOKENS + words[: max(0, max_vocab - len(SPECIAL_TOKENS))])

    def extended(self, other: "Vocab", max_vocab: int = 60000) -> "Vocab":
        """This vocabulary followed by ``other``'s tokens it lacks (in ``other``'s order), up to ``max_vocab``."""
        extra = [t for t in other.itos[len(SPECIAL_TOKENS):] if t not in self.stoi]
        return Vocab(self.itos + extra[: max(0, max_vocab - len(self.itos))])

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def numericalize(self, tokens: Sequence[str]) -> np.ndarray:
        """Token ids (unknown tokens -> ``xxunk``)."""
        return np.fromiter((self.stoi.get(t, UNK_IDX) for t in tokens), dtype=np.int64, count=len(tokens))

    def save(self, path: str | os.PathLike):
        from .artifact import atomic_write
        atomic_write(path, json.dumps({"itos": self.itos}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["itos"])


def numericalize(token_lists: Sequence[Sequence[str]], vocab: Vocab, backwards: bool = False) -> list[np.ndarray]:
    """Token ids per document; ``backwards`` reverses each document (the paper's backward model)."""
    ids = [vocab.numericalize(t) for t in token_lists]
    return [a[::-1].copy() for a in ids] if backwards else ids
