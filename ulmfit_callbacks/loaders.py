"""fastai DataLoaders for ULMFiT: the LM stream and the classification batches.

- :class:`LMLoader` draws the paper's variable BPTT length per batch: N(bptt, 5) with
  probability 0.95, N(bptt/2, 5) otherwise; the drawn length is ``x.shape[1]`` and
  ``loader.last_seq_len`` so a schedule can rescale the lr by ``seq_len / bptt``.
- :class:`ClassifierLoader` pads documents to the batch's longest, "sortish" in training.
- ``backwards=True`` reverses the token ids of every document (the paper's backward model);
  the direction is recorded on the loaders and checked by the learners.
- :func:`lm_dataloaders` and :func:`classifier_dataloaders` take a
  :class:`~ulmfit_callbacks.corpus.Corpus` (or, for convenience, a list of texts).
- Both loaders speak fastai's ``DataLoader`` hooks (``get_idxs`` / ``create_batches``), so
  ``learn.distrib_ctx()`` (fastai's ``DistributedDL``) shards them: every rank gets its own
  contiguous slice of the epoch's items (rank 0's order, broadcast), the same number of batches.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Iterable, Sequence

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.torch_core import default_device

from .corpus import Corpus, as_corpus, label_parts
from .tokenizer import SpacyTokenizer, Tokenizer
from .vocab import PAD_IDX, Vocab, numericalize

__all__ = ["LMLoader", "ClassifierLoader", "ULMFiTDataLoaders", "lm_dataloaders", "classifier_dataloaders"]


class _Loader:
    """What fastai needs from a loader: ``Learner`` (``len``, iteration, ``to``, ``one_batch``) and
    ``DistributedDL`` (``learn.distrib_ctx()``).

    An epoch is ``create_batches(get_idxs())``: ``get_idxs()`` draws the epoch's items in order
    (documents for the classifier, batches for the LM), ``create_batches`` turns any run of them
    into CPU batches. ``DistributedDL`` calls the two with rank 0's items cut into one contiguous,
    equally long slice per rank, and moves the batches to the model's device itself; it also reads
    ``bs``, ``drop_last``, ``dataset``, ``fake_l``, ``num_workers``, ``offs``, ``pin_memory`` and
    calls the no-op hooks below. Unknown attributes of the wrapper are looked up on ``dataset``
    (the loader itself), so e.g. ``learn.dl.variable_bptt`` still answers under ``distrib_ctx``.
    """
    device: torch.device | None = None
    drop_last = False
    num_workers, offs, pin_memory = 1, 0, False  # fastai's convention: the main process reads index stream 0 of 1
    fake_l = SimpleNamespace(pin_memory=False, num_workers=0, timeout=0, persistent_workers=False, pin_memory_device="")

    def to(self, device):
        self.device = torch.device(device) if device is not None else None
        return self

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if self.device is not None else t

    @property
    def dataset(self):
        return self

    def get_idxs(self) -> list[int]:
        raise NotImplementedError

    def create_batches(self, idxs: Iterable[int]):
        raise NotImplementedError

    def __iter__(self):
        for b in self.create_batches(self.get_idxs()):
            yield tuple(self._out(t) for t in b)

    def randomize(self):
        """No-op: the loaders draw from their own seeded ``rng``."""

    def before_iter(self):
        pass

    def after_iter(self):
        pass

    def after_batch(self, b):
        return b

    def one_batch(self):
        return next(iter(self))

    @property
    def n(self) -> int:
        return self.n_items


class LMLoader(_Loader):
    """Language-model batches ``(x, y)`` over the concatenated token stream, ``y`` = ``x`` shifted by one.

    The stream (documents in shuffled order when ``shuffle``) is cut into ``bs`` contiguous rows
    so the hidden state carries across batches. With ``variable_bptt`` each batch's length is
    drawn as in the paper (Merity et al. 2017, Sec. 4.1): ``N(bptt, 5)`` w.p. 0.95 else
    ``N(bptt/2, 5)``, clipped to [5, bptt + 40]. The number of batches per epoch is fixed,
    ``ceil((rows_len - 1) / bptt)``, so schedules know ``len(loader)`` in advance.

    The items of an epoch (``get_idxs()``) are its batches: under ``learn.distrib_ctx()`` rank ``r``
    of ``w`` reads the ``r``-th contiguous ``1/w`` of the epoch's batches (its own stretch of every
    row, the hidden state carried within it), and every rank must draw the same plan (document
    order, sequence lengths), hence a shared ``seed``.

    Hand-built DDP: with ``world_size`` > 1 the stream is cut into ``bs * world_size`` rows and
    rank ``rank`` reads rows ``rank * bs`` to ``(rank + 1) * bs``. Every rank draws the same
    document order and sequence lengths from the shared ``seed``, so batches line up across ranks.
    Leave ``rank``/``world_size`` at their defaults under ``distrib_ctx``, which shards by itself.
    """

    def __init__(self, docs: Sequence[np.ndarray], bs: int = 64, bptt: int = 70, shuffle: bool = False,
                 variable_bptt: bool | None = None, seed: int | None = None, device=None, rank: int = 0,
                 world_size: int = 1):
        if bs < 1 or bptt < 1:
            raise ValueError(f"bs and bptt must be >= 1, got bs={bs}, bptt={bptt}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = rank, world_size
        self.docs = [np.asarray(d, dtype=np.int64) for d in docs]
        self.bs, self.bptt, self.shuffle = bs, bptt, shuffle
        self.variable_bptt = shuffle if variable_bptt is None else variable_bptt
        if world_size > 1 and self._random and seed is None:
            raise ValueError("distributed LM loaders need a shared `seed` so that every rank reads the same order")
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.n_items = int(sum(len(d) for d in self.docs))
        self.last_seq_len = bptt
        self._plan: tuple = (None, [])  # (this rank's rows, [(start, length)] per batch) of the current epoch
        self.device = torch.device(device) if device is not None else None
        if self.docs and self.n_items // (bs * world_size) < 2:
            raise ValueError(f"{self.n_items} tokens are too few for batch size {bs} x {world_size} rank(s): "
                             f"use a batch size of at most {max(1, self.n_items // (2 * world_size))} (--bs) or more text")

    @property
    def row_len(self) -> int:
        return self.n_items // (self.bs * self.world_size)

    def __len__(self) -> int:
        return 0 if not self.docs else math.ceil((self.row_len - 1) / self.bptt)

    def _seq_lens(self, n: int) -> np.ndarray:
        if not self.variable_bptt:
            return np.full(n, self.bptt)
        base = np.where(self.rng.random(n) < 0.95, self.bptt, self.bptt / 2)
        lens = np.rint(self.rng.normal(base, 5)).astype(int)
        return np.clip(lens, min(5, self.bptt), self.bptt + 40)

    @property
    def _random(self) -> bool:
        return self.shuffle or self.variable_bptt

    def get_idxs(self) -> list[int]:
        """Draw this epoch's plan (document order, start offset, each batch's length); the items are batch numbers."""
        n = len(self)
        if n == 0:
            return []
        if self._random and self.seed is None and _world_size() > 1:
            raise ValueError("under distributed training every rank must draw the same LM batches: give the loader a `seed`")
        order = self.rng.permutation(len(self.docs)) if self.shuffle else range(len(self.docs))
        stream = np.concatenate([self.docs[i] for i in order])
        L = self.row_len
        rows = torch.from_numpy(stream[: L * self.bs * self.world_size].reshape(self.bs * self.world_size, L))
        lens = self._seq_lens(n)
        spare = (L - 1) - int(lens.sum())
        i = int(self.rng.integers(0, spare + 1)) if (self.shuffle and spare > 0) else 0
        spans = []
        for b in range(n):
            sl = max(int(min(lens[b], (L - 1) - i - (n - b - 1))), 1)  # leave >= 1 token per remaining batch
            spans.append((i, sl))
            i += sl
        self._plan = rows[self.rank * self.bs: (self.rank + 1) * self.bs], spans
        return list(range(n))

    def create_batches(self, idxs: Iterable[int]):
        """CPU batches ``(x, y)`` of the batch numbers ``idxs`` of the plan drawn by the last ``get_idxs()``."""
        rows, spans = self._plan
        for b in idxs:
            i, sl = spans[b]
            self.last_seq_len = sl
            yield rows[:, i: i + sl], rows[:, i + 1: i + 1 + sl]

    def new(self, docs=None, **kwargs) -> "LMLoader":
        args = dict(docs=self.docs if docs is None else docs, bs=self.bs, bptt=self.bptt, shuffle=self.shuffle,
                    variable_bptt=self.variable_bptt, seed=self.seed, device=self.device, rank=self.rank,
                    world_size=self.world_size)
        args.update({k: v for k, v in kwargs.items() if k in args})
        return LMLoader(**args)


class ClassifierLoader(_Loader):
    """Classification batches ``(x, y)``: documents padded (at the end) to the batch's longest.

    Training batches are "sortish" (fastai's ``SortedDL``): shuffled, then sorted by length
    within pools of 50 batches, so padding stays small. Evaluation iterates longest first;
    ``get_idxs()`` exposes the order so ``Learner.get_preds`` returns input order.

    Under ``learn.distrib_ctx()`` each rank reads a contiguous, equally long slice of rank 0's
    ``get_idxs()`` (fastai pads it to a multiple of the world size with its first documents), in
    batches of ``bs``; a rank's one-row last training batch takes a document from the batch before.
    """

    def __init__(self, docs: Sequence[np.ndarray], labels, bs: int = 64, shuffle: bool = False,
                 pad_idx: int = PAD_IDX, seed: int | None = None, device=None, get_idxs=None):
        self.docs = [np.asarray(d, dtype=np.int64) for d in docs]
        self.labels = torch.as_tensor(np.asarray(labels)) if len(self.docs) else torch.zeros(0, dtype=torch.long)
        if len(self.labels) != len(self.docs):
            raise ValueError(f"{len(self.docs)} documents but {len(self.labels)} labels")
        if any(len(d) == 0 for d in self.docs):
            raise ValueError("a document has no tokens")
        self.bs, self.shuffle, self.pad_idx, self.seed = bs, shuffle, pad_idx, seed
        self.rng = np.random.default_rng(seed)
        self.lengths = np.array([len(d) for d in self.docs], dtype=np.int64)
        self.n_items = len(self.docs)
        self.device = torch.device(device) if device is not None else None
        self._get_idxs = get_idxs

    @property
    def drop_last(self) -> bool:
        """Training drops a last batch of one row (BatchNorm cannot train on it); other batches are kept."""
        return self.shuffle and self.n_items > 1 and self.n_items % self.bs == 1

    def __len__(self) -> int:
        return math.ceil(self.n_items / self.bs) - int(self.drop_last)

    def get_idxs(self) -> list[int]:
        """This epoch's documents in reading order; without the last one when ``drop_last``."""
        if self._get_idxs is not None:
            return list(self._get_idxs())
        if not self.shuffle:
            return np.argsort(-self.lengths, kind="stable").tolist()
        perm = self.rng.permutation(self.n_items)
        pool = self.bs * 50
        chunks = [sorted(perm[i: i + pool], key=lambda j: -self.lengths[j]) for i in range(0, len(perm), pool)]
        batches = [c[i: i + self.bs] for c in chunks for i in range(0, len(c), self.bs)]
        first = int(np.argmax([self.lengths[b[0]] for b in batches]))  # longest batch first: memory errors early
        rest = [batches[i] for i in self.rng.permutation(len(batches)) if i != first]
        idxs = [int(j) for b in [batches[first]] + rest for j in b]
        return idxs[:-1] if self.drop_last else idxs

    def pad(self, idxs: Sequence[int]) -> torch.Tensor:
        sl = int(self.lengths[list(idxs)].max())
        x = torch.full((len(idxs), sl), self.pad_idx, dtype=torch.long)
        for r, j in enumerate(idxs):
            x[r, : self.lengths[j]] = torch.from_numpy(self.docs[j])
        return x

    def create_batches(self, idxs: Iterable[int]):
        """CPU batches ``(x, y)`` of ``bs`` documents each, in the order of ``idxs``."""
        idxs = list(idxs)
        batches = [idxs[i: i + self.bs] for i in range(0, len(idxs), self.bs)]
        if self.shuffle and len(batches) > 1 and len(batches[-1]) == 1 and len(batches[-2]) > 2:
            batches[-1].insert(0, batches[-2].pop())  # BatchNorm cannot train on one row (a rank's last batch)
        for b in batches:
            yield self.pad(b), self.labels[b]

    def new(self, docs=None, labels=None, **kwargs) -> "ClassifierLoader":
        args = dict(docs=self.docs if docs is None else docs, labels=self.labels if labels is None else labels,
                    bs=self.bs, shuffle=self.shuffle, pad_idx=self.pad_idx, seed=self.seed, device=self.device,
                    get_idxs=self._get_idxs)
        args.update({k: v for k, v in kwargs.items() if k in args})
        return ClassifierLoader(**args)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class ULMFiTDataLoaders(DataLoaders):
    """fastai ``DataLoaders`` of our loaders, with the vocabulary, direction and classes attached.

    ``device``: where batches (and so the learner's model) go; ``None`` means fastai's
    ``default_device()`` (the GPU when there is one), as fastai's own ``DataLoaders`` do.
    ``tokenizer``: what made the tokens (default: fastai's spaCy rules), saved with models.
    """

    def __init__(self, *loaders, vocab: Vocab, backwards: bool = False, kind: str = "lm",
                 classes: list | None = None, multi_label: bool = False, path=".", device=None,
                 tokenizer: Tokenizer | None = None):
        super().__init__(*loaders, path=path, device=default_device() if device is None else torch.device(device))
        self.vocab, self.backwards, self.kind = vocab, backwards, kind
        self.classes, self.multi_label = classes, multi_label
        self.tokenizer = SpacyTokenizer() if tokenizer is None else tokenizer  # what made the tokens

    def new_empty(self):
        empty = [dl.new(docs=[], labels=[]) if isinstance(dl, ClassifierLoader) else dl.new(docs=[]) for dl in self.loaders]
        return type(self)(*empty, vocab=self.vocab, backwards=self.backwards, kind=self.kind, classes=self.classes,
                          multi_label=self.multi_label, path=self.path, device=self.device,
                          tokenizer=self.tokenizer)

    @property
    def meta(self) -> dict:
        """What a learner must agree with: direction, kind, vocabulary size, classes."""
        return dict(backwards=self.backwards, kind=self.kind, vocab_sz=len(self.vocab), classes=self.classes,
                    multi_label=self.multi_label)


def _train_valid(train, valid, valid_pct: float, seed: int, label_delim: str | None = None,
                 keep_classes: bool = True) -> tuple[Corpus, Corpus]:
    train = as_corpus(train)
    if len(train) == 0:
        raise ValueError("no training texts")
    if valid is None:
        return train.split(valid_pct, seed, label_delim, keep_classes)
    return train, as_corpus(valid, tokenizer=train.tokenizer)


def lm_dataloaders(train: Corpus | Sequence[str], valid: Corpus | Sequence[str] | None = None, vocab: Vocab | None = None,
                   valid_pct: float = 0.1, bs: int = 64, bptt: int = 70, backwards: bool = False,
                   max_vocab: int = 60000, min_freq: int = 2, variable_bptt: bool = True, seed: int = 42, device=None,
                   extra_vocab: Vocab | None = None) -> ULMFiTDataLoaders:
    """LM DataLoaders. Without ``valid``, a seeded ``valid_pct`` of ``train`` is held out.

    The vocabulary comes from the training tokens only, followed by ``extra_vocab``'s tokens it
    lacks (up to ``max_vocab``) when given.
    """
    train, valid = _train_valid(train, valid, valid_pct, seed, keep_classes=False)  # labels play no part
    vocab = vocab or Vocab.build(train.tokens, max_vocab=max_vocab, min_freq=min_freq)
    if extra_vocab is not None:
        vocab = vocab.extended(extra_vocab, max_vocab)
    trn = LMLoader(numericalize(train.tokens, vocab, backwards), bs=bs, bptt=bptt, shuffle=True,
                   variable_bptt=variable_bptt, seed=seed)
    val = LMLoader(numericalize(valid.tokens, vocab, backwards), bs=bs, bptt=bptt, shuffle=False)
    return ULMFiTDataLoaders(trn, val, vocab=vocab, backwards=backwards, kind="lm", device=device,
                             tokenizer=train.tokenizer)


def classifier_dataloaders(train: Corpus, valid: Corpus | None = None, *, vocab: Vocab, valid_pct: float = 0.1,
                           bs: int = 64, backwards: bool = False, multi_label: bool = False, label_delim: str = ";",
                           classes: list | None = None, seed: int = 42, max_tokens: int | None = None,
                           device=None) -> ULMFiTDataLoaders:
    """Classification DataLoaders from labelled corpora; ``vocab`` must be the fine-tuned LM's.

    Labels: one per text (single-label), or with ``multi_label`` a list or a
    ``label_delim``-joined string of labels per text. ``classes`` fixes the class order.
    Without ``valid``, a seeded ``valid_pct`` of ``train`` is held out. ``max_tokens`` keeps the
    first tokens of each document (the text's start in either direction).
    """
    train, valid = _train_valid(train, valid, valid_pct, seed, label_delim if multi_label else None)
    for c, name in ((train, "training"), (valid, "validation")):
        if c.labels is None:
            raise ValueError(f"the {name} corpus has no labels")
    split = (lambda l: label_parts(l, label_delim)) if multi_label else (lambda l: [l])  # noqa: E731
    seen = sorted({c for l in train.labels for c in split(l)}, key=str)
    classes = list(classes) if classes is not None else seen
    if len(classes) < 2 and not multi_label:
        raise ValueError(f"classification needs at least two classes; the training labels hold only {classes}")
    c2i = {c: i for i, c in enumerate(classes)}

    def encode(labels, where):
        unknown = sorted({c for l in labels for c in split(l) if c not in c2i}, key=str)
        if unknown:
            more = f" ... ({len(classes)} in all)" if len(classes) > 20 else ""
            raise ValueError(f"{where} labels {unknown[:10]} never occur in the training labels {classes[:20]}{more}")
        if multi_label:
            y = np.zeros((len(labels), len(classes)), dtype=np.float32)
            for r, l in enumerate(labels):
                y[r, [c2i[c] for c in split(l)]] = 1.0
            return y
        return np.array([c2i[l] for l in labels], dtype=np.int64)

    y_train, y_valid = encode(train.labels, "training"), encode(valid.labels, "validation")
    toks = [train.tokens, valid.tokens]
    if max_tokens:
        toks = [[t[:max_tokens] for t in ts] for ts in toks]  # the same span of text in both directions
    trn = ClassifierLoader(numericalize(toks[0], vocab, backwards), y_train, bs=bs, shuffle=True, seed=seed)
    val = ClassifierLoader(numericalize(toks[1], vocab, backwards), y_valid, bs=bs * 2, shuffle=False)
    return ULMFiTDataLoaders(trn, val, vocab=vocab, backwards=backwards, kind="classifier", classes=classes,
                             multi_label=multi_label, device=device, tokenizer=train.tokenizer)
