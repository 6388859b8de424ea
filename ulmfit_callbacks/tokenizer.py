"""Pluggable tokenisers, fast, with an on-disk cache so a corpus is tokenised once.

Two tokenisers share one small interface (:class:`Tokenizer`): called on a list of texts they
return one token list per text, in input order; :meth:`~Tokenizer.to_dict` gives their settings
as JSON (saved in a model folder's ``config.json``), :meth:`~Tokenizer.save` writes the files
they need into a model folder, and :func:`tokenizer_from_dict` rebuilds them.

- :class:`SpacyTokenizer`: fastai's default tokenisation, token for token: fastai's rules
  (``xxbos``, ``xxmaj``, ``xxup``, ``xxrep``, ``fix_html``...) and spaCy's blank pipeline for
  the language, nothing downloaded. It is fast because spaCy's tokenizer works on each
  whitespace-delimited chunk of a text on its own: every distinct chunk is tokenised once per
  process and remembered (see :class:`_SpacyEngine` for why this gives exactly spaCy's tokens),
  and large inputs are shared between worker processes.
- :class:`SentencePieceTokenizer`: a subword model trained on your texts (:meth:`~SentencePieceTokenizer.train`),
  kept in memory and saved as ``spm.model``. It sees the text as it is: fastai's rules are
  *not* applied, so case stays in the pieces (``▁The`` and ``▁the``) instead of ``xxmaj`` /
  ``xxup`` markers, the pieces decode back to the text, and encoding stays a C++ loop.
  SentencePiece's own normalisation (NFKC, runs of whitespace and newlines become one space)
  applies. Every text's tokens start with ``xxbos``. fastai's nine special tokens are in the
  model, in fastai's order, as its first nine pieces (``xxunk`` is its unknown piece).

:func:`tokenize_cached` keys a cache file on the texts' content and the tokenizer's
:attr:`~Tokenizer.fingerprint`, so the second run on the same corpus only reads the file.
The cache lives in ``~/.cache/ulmfit_callbacks/tokens``; the environment variable
``ULMFIT_TOKEN_CACHE`` names another folder, or turns the cache off with ``0`` / ``off``.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import struct
import warnings
from itertools import chain, compress, count
from operator import eq
from pathlib import Path
from typing import Sequence

import numpy as np

from .vocab import SPECIAL_TOKENS

__all__ = ["SPECIAL_TOKENS", "MAX_PIECE_CHARS", "Tokenizer", "SpacyTokenizer", "SentencePieceTokenizer", "get_tokenizer",
           "tokenizer_from_dict", "tokenize_cached", "token_cache_dir", "tokenize"]

BOS = "xxbos"
MAX_PIECE_CHARS = 200_000  # spaCy refuses texts over nlp.max_length (1,000,000 characters)
SPM_FILE = "spm.model"
CACHE_FORMAT = "ulmfit_callbacks.tokens/1"
_DEFAULT_CACHE = Path.home() / ".cache" / "ulmfit_callbacks" / "tokens"
_PARALLEL_MIN_CHARS = 1_000_000  # below this, forking workers costs more than it saves
_MEMO_MAX = 2_000_000  # chunks remembered per process before the memo starts afresh
# fastai.text.core.eu_langs: SentencePiece's character coverage is 0.99999 for these, 0.9998 otherwise
_EU_LANGS = {"bg", "cs", "da", "de", "el", "en", "es", "et", "fi", "fr", "ga", "hr", "hu", "it", "lt", "lv", "mt", "nl", "pl",
             "pt", "ro", "sk", "sl", "sv"}


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ base
class Tokenizer:
    """A tokeniser: ``tok(texts)`` returns one token list per text, in input order.

    Subclasses set :attr:`name` and implement :meth:`__call__` and :meth:`to_dict`; one that
    needs files (a trained model) writes them in :meth:`save` and reads them back in
    :func:`tokenizer_from_dict`.
    """

    name: str = ""

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The settings, JSON-able, with ``"name"``: what :func:`tokenizer_from_dict` rebuilds it from."""
        raise NotImplementedError

    def save(self, folder: str | os.PathLike) -> None:
        """Write the files this tokenizer needs into the model folder ``folder`` (none by default)."""

    @property
    def fingerprint(self) -> str:
        """A short hash of the settings (and of the model file, for a trained model): tokens from two
        tokenizers with the same fingerprint are the same. Keys the token cache; compare it to check
        that a model is fed the tokens it was trained on."""
        return _sha256(json.dumps(self.to_dict(), sort_keys=True).encode())[:16]

    def _versions(self) -> str:
        """Versions of the libraries the tokens depend on (part of the cache key, not of the fingerprint)."""
        return ""

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"{type(self).__name__}({settings})"


def _check_lang(lang: str) -> str:
    if not isinstance(lang, str) or not re.fullmatch(r"[a-z]{2,3}(?:[-_][A-Za-z0-9]+)?", lang):
        raise ValueError(f"lang must be a language code such as 'en' or 'de', got {lang!r}")
    return lang


# ----------------------------------------------------------------------------------------- spaCy
def _fastai_rules():
    """fastai's default pre-rules (``defaults.text_proc_rules`` as fastai ships them), in fastai's order.

    Two are skipped where they cannot change the text: ``replace_wrep`` needs two equal words in a
    row, ``rm_useless_spaces`` two spaces in a row.
    """
    import fastai.text.core as fc

    def replace_wrep(t: str) -> str:
        w = t.split()
        return fc.replace_wrep(t) if any(map(eq, w, w[1:])) else t

    def rm_useless_spaces(t: str) -> str:
        return fc.rm_useless_spaces(t) if "  " in t else t

    return [fc.fix_html, fc.replace_rep, replace_wrep, fc.spec_add_spaces, rm_useless_spaces, fc.replace_all_caps, fc.replace_maj,
            fc.lowercase]


def _post(text: str) -> str:
    """fastai's post-rule (``replace_space``): spaces inside a token become ``▁``."""
    return text.replace(" ", "\u2581") if " " in text else text


# The chunks spaCy's tokenizer handles one by one (Tokenizer._tokenize_affixes): runs of
# non-space characters, and runs of whitespace less the one plain space that ends a word;
# a text's leading whitespace is one chunk. Python's \s is exactly str.isspace(), as in spaCy.
_CHUNK = re.compile(r"^\s+|\S+|(?<=\S )\s+|(?<=\S)[^\S ]\s*")


class _Memo(dict):
    """chunk -> its tokens; a missing chunk is tokenised by the engine."""

    def __init__(self, engine: "_SpacyEngine"):
        super().__init__()
        self.engine = engine

    def __missing__(self, chunk: str) -> tuple:
        return self.engine._learn(chunk)


class _SpacyEngine:
    """fastai's rules + spaCy's tokenizer for one language, with a per-process memo of chunks.

    spaCy tokenises a text chunk by chunk (see ``_CHUNK``; a chunk's tokens do not depend on its
    neighbours), then runs a phrase matcher over the whole text for special cases written with
    punctuation (``:)``, ``'s``, ``a.m.``...). A match across a chunk boundary changes nothing by
    itself but can hide an overlapping match. So a text is tokenised from the memo of its chunks
    only when no two neighbouring chunks could start such a match: the last token of one and the
    first token of the next (as the matcher sees them) are never consecutive tokens of a special
    case's pattern. Otherwise (about 2% of texts) the whole text goes to spaCy. Either way the
    tokens are spaCy's; the tests compare them with fastai's ``tokenize_texts`` on real corpora.
    """

    def __init__(self, lang: str):
        import spacy
        from spacy.symbols import ORTH
        from spacy.tokenizer import Tokenizer as SpacyTok
        self.lang = lang
        try:
            spacy.util.get_lang_class(lang)
        except ImportError:
            raise ValueError(f"spaCy has no language {lang!r}") from None
        try:
            nlp = spacy.blank(lang)
        except ImportError as e:  # a language whose tokenizer needs another package
            raise ImportError(f"spaCy's {lang!r} tokenizer needs another package: {e}") from None
        tk = nlp.tokenizer
        if not hasattr(tk, "add_special_case"):
            raise ValueError(f"spaCy's {lang!r} tokenizer ({type(tk).__name__}) cannot keep fastai's special tokens whole; "
                             "use the SentencePiece tokenizer for this language")
        for w in SPECIAL_TOKENS:  # as fastai's SpacyTokenizer does
            tk.add_special_case(w, [{ORTH: w}])
        self.tk, self.rules, self.memo = tk, _fastai_rules(), _Memo(self)
        self.risky: dict[str, set[str]] = {}  # chunk -> first tokens of a next chunk that would continue a pattern
        self.first1: dict[str, str] = {}  # chunk -> its first token as the matcher sees it, where that can continue one
        self.exact_chunks = type(tk) is SpacyTok and self._setup_guard(nlp.vocab, tk, SpacyTok)

    def _setup_guard(self, vocab, tk, SpacyTok) -> bool:
        """The special cases' patterns, and a tokenizer that stops before the phrase matcher
        (``self.tk1``). False where spaCy's internals are not as expected: whole texts then."""
        from spacy.attrs import ORTH
        affix = dict(prefix_search=tk.prefix_search, suffix_search=tk.suffix_search, infix_finditer=tk.infix_finditer,
                     token_match=tk.token_match, url_match=tk.url_match)
        bare = SpacyTok(vocab, rules={}, **affix)  # spaCy's _tokenize_affixes(s, False): how a pattern is made
        pairs: dict[str, set[str]] = {}
        rule_toks: set[str] = set()
        for s, subs in tk.rules.items():
            if not (tk.find_prefix(s) or tk.find_infix(s) or tk.find_suffix(s) or " " in s):
                continue  # add_special_case puts only these in the matcher
            p = [t.text for t in bare(s)]
            if " " in s and len(p) > 1:
                return False  # a special case across a space: the matcher works across chunks
            for a, b in zip(p, p[1:]):
                pairs.setdefault(a, set()).add(b)
            rule_toks.update(sub[ORTH] if ORTH in sub else sub["ORTH"] for sub in subs)
        asked = []

        class _Phase1(SpacyTok):  # no phrase matcher: add_special_case asks find_* before adding a pattern
            def find_prefix(self, s):
                if self.__dict__.get("loading", True):
                    asked.append(s)
                    return 0
                return super().find_prefix(s)

            def find_suffix(self, s):
                return 0 if self.__dict__.get("loading", True) else super().find_suffix(s)

            def find_infix(self, s):
                return [] if self.__dict__.get("loading", True) else super().find_infix(s)

        tk1 = _Phase1(vocab, rules=tk.rules, **affix)
        tk1.loading = False
        if not tk.faster_heuristics or (tk.rules and not asked):
            return False
        self.tk1, self.pairs, self.rule_toks = tk1, pairs, rule_toks
        self.rights = set().union(*pairs.values())
        return True

    def _learn(self, chunk: str) -> tuple:
        """Tokenise a chunk not seen before, and note whether it can take part in a match across chunks."""
        memo, tk = self.memo, self.tk
        if chunk in tk.rules or tk.find_prefix(chunk) or tk.find_suffix(chunk) or tk.find_infix(chunk):
            raw = [t.text for t in tk(chunk)]
        else:  # what spaCy does with a chunk that is no special case and has no affix: one token
            raw = [chunk]
        toks = memo[chunk] = tuple(map(_post, raw))
        # the matcher's tokens differ from the final ones only where a special case replaced them
        first, last = raw[0], raw[-1]
        if first in self.rule_toks or last in self.rule_toks:
            p1 = self.tk1(chunk)
            first, last = p1[0].text, p1[-1].text
        if last in self.pairs:
            self.risky[chunk] = self.pairs[last]
        if first in self.rights:
            self.first1[chunk] = first
        return toks

    def tokenize1(self, text: str) -> list[str]:
        """One text: fastai's rules, then tokens (a text over ``MAX_PIECE_CHARS`` works, slower with spaCy alone)."""
        if len(self.memo) >= _MEMO_MAX:  # between texts: a text's chunks and their notes stay together
            self.memo.clear()
            self.risky.clear()
            self.first1.clear()
        for r in self.rules:
            text = r(text)
        if self.exact_chunks:
            if text.isprintable() and "  " not in text and not text.startswith(" "):
                chunks = text.split(" ")  # no whitespace but single spaces (all others are unprintable)
                if not chunks[-1]:
                    chunks.pop()
            else:
                chunks = _CHUNK.findall(text)
            toks = list(chain.from_iterable(map(self.memo.__getitem__, chunks)))
            risky = self.risky
            if risky.keys().isdisjoint(chunks):
                return toks
            n, first1 = len(chunks), self.first1
            joined = {i for i in compress(count(), map(risky.__contains__, chunks))
                      if i + 1 < n and first1.get(chunks[i + 1]) in risky[chunks[i]]}
            if not joined:
                return toks
            toks = self._grouped(chunks, joined)
            if toks is not None:
                return toks
        return [_post(t.text) for t in self.tk(text)]

    def _grouped(self, chunks: list[str], joined: set[int]) -> list[str] | None:
        """Tokens of a text whose chunks ``i`` and ``i + 1`` (``i`` in ``joined``) could form a match:
        those go to spaCy together, the others come from the memo. None if a group has whitespace chunks."""
        out: list[str] = []
        i, n = 0, len(chunks)
        while i < n:
            j = i
            while j in joined:
                j += 1
            if j == i:
                out += self.memo[chunks[i]]
            else:
                group = chunks[i:j + 1]
                if any(c[0].isspace() for c in group):
                    return None  # only plain words are known to be one space apart
                out += [_post(t.text) for t in self.tk(" ".join(group))]
            i = j + 1
        return out

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        return [self.tokenize1(t) for t in texts]


_ENGINES: dict[str, _SpacyEngine] = {}  # per process; forked workers inherit the parent's (and its memo)


def _engine(lang: str) -> _SpacyEngine:
    if lang not in _ENGINES:
        _ENGINES[lang] = _SpacyEngine(lang)
    return _ENGINES[lang]


def _work(args: tuple[str, list[str]]) -> list[list[str]]:
    lang, texts = args
    return _engine(lang).tokenize(texts)


def _pieces(text: str, size: int = MAX_PIECE_CHARS) -> list[str]:
    """``text`` cut at whitespace into pieces of at most about ``size`` characters."""
    out, i = [], 0
    while len(text) - i > size:
        j = text.rfind(" ", i + size // 2, i + size)
        j = i + size if j < 0 else j
        out.append(text[i:j])
        i = j
    return out + [text[i:]]


def _chunks_by_chars(texts: list[str], n: int) -> list[list[str]]:
    """``texts`` cut into about ``n`` consecutive runs of similar total length."""
    total = sum(map(len, texts))
    out, cur, size, target = [], [], 0, total / n
    for t in texts:
        cur.append(t)
        size += len(t)
        if size >= target * (len(out) + 1):
            out.append(cur)
            cur = []
    return out + [cur] if cur else out


class SpacyTokenizer(Tokenizer):
    """fastai's default tokenisation: its rules, then spaCy's blank pipeline for ``lang``.

    Gives exactly the tokens of ``fastai.text.core.tokenize_texts(texts, tok=SpacyTokenizer(lang))``.
    A text over ``MAX_PIECE_CHARS`` characters is tokenised in pieces cut at whitespace (each
    piece goes through fastai's rules) and the pieces' tokens are joined, with one ``xxbos``.

    ``n_workers``: processes for inputs over about a million characters (default: the number of
    CPUs, at most 8); ``0`` or ``1`` tokenises in this process. Not a setting of the tokens: it
    is not in :meth:`to_dict`.
    """

    name = "spacy"

    def __init__(self, lang: str = "en", n_workers: int | None = None):
        self.lang = _check_lang(lang)
        _engine(self.lang)  # fail now on an unknown language; forked workers inherit it
        self.n_workers = _default_workers() if n_workers is None else int(n_workers)

    def to_dict(self) -> dict:
        return {"name": self.name, "lang": self.lang, "rules": "fastai"}

    def _versions(self) -> str:
        import fastai
        import spacy
        return f"spacy {spacy.__version__}, fastai {fastai.__version__}"

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        texts = [str(t) for t in texts]
        flat, owner = [], []
        for i, t in enumerate(texts):
            ps = _pieces(t) if len(t) > MAX_PIECE_CHARS else [t]
            flat += ps
            owner += [i] * len(ps)
        toks = self._run(flat)
        if len(flat) == len(texts):
            return toks
        out: list[list[str]] = [[] for _ in texts]
        for i, tk in zip(owner, toks):
            out[i] += tk[1:] if out[i] and tk[:1] == [BOS] else tk
        return out

    def _run(self, texts: list[str]) -> list[list[str]]:
        engine = _engine(self.lang)
        n = self.n_workers
        if n <= 1 or len(texts) < 2 * n or sum(map(len, texts)) < _PARALLEL_MIN_CHARS:
            return engine.tokenize(texts)
        return _shared_work(engine, texts, n)


def _shared_work(engine: _SpacyEngine, texts: list[str], n: int) -> list[list[str]]:
    """``engine.tokenize(texts)`` by this process and ``n - 1`` forked workers, taking runs of
    texts as they become free (this process keeps its chunk memo for later calls)."""
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else None)
    jobs = _chunks_by_chars(texts, 6 * n)
    results: list = [None] * len(jobs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        with ctx.Pool(n - 1) as pool:
            pending, nxt = {}, 0
            while nxt < len(jobs) or pending:
                while nxt < len(jobs) and len(pending) < 2 * (n - 1):  # keep every worker busy
                    pending[nxt] = pool.apply_async(_work, ((engine.lang, jobs[nxt]),))
                    nxt += 1
                for i in [i for i, r in pending.items() if r.ready()]:
                    results[i] = pending.pop(i).get()
                if nxt < len(jobs):
                    results[nxt] = engine.tokenize(jobs[nxt])
                    nxt += 1
                elif pending:
                    i = min(pending)
                    results[i] = pending.pop(i).get()
    return list(chain.from_iterable(results))


# --------------------------------------------------------------------------------- SentencePiece
def _spm():
    try:
        import sentencepiece
    except ImportError:
        raise ImportError("the SentencePiece tokenizer needs `pip install sentencepiece`") from None
    return sentencepiece


def _sentences(texts: Sequence[str], max_chars: int = 4000):
    """Training sentences: the texts' lines, long lines cut at spaces into pieces of at most ``max_chars``."""
    for t in texts:
        for line in str(t).splitlines():
            line = line.strip()
            while len(line) > max_chars:
                j = line.rfind(" ", max_chars // 2, max_chars)
                j = max_chars if j < 0 else j
                yield line[:j]
                line = line[j:].lstrip()
            if line:
                yield line


def _default_vocab_sz(texts: Sequence[str], max_vocab_sz: int = 30000) -> int:
    """fastai's rule: a quarter of the distinct words, rounded up to a multiple of 8, in [32, max_vocab_sz]."""
    words: set[str] = set()
    for t in texts:
        words.update(str(t).split())
        if len(words) // 4 > max_vocab_sz:
            return max_vocab_sz
    return max(32, -(-(len(words) // 4) // 8) * 8)


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece subwords (``unigram`` or ``bpe``), trained on your texts by :meth:`train`.

    Tokens of a text: ``["xxbos", *pieces]``. The text goes to SentencePiece as it is (no fastai
    rules: case stays in the pieces). Unknown characters become ``xxunk``. The model's first nine
    pieces are fastai's special tokens, in fastai's order.

    ``vocab_sz``: pieces in the model (default: fastai's rule, a quarter of the distinct words,
    at most 30,000; a corpus too small for it gives fewer). ``char_coverage``: characters covered
    by the model (default 0.99999 for European languages, 0.9998 otherwise, as fastai).
    ``n_workers``: threads for encoding (not a setting of the tokens; training uses one thread, see :meth:`train`).
    """

    name = "sentencepiece"

    def __init__(self, vocab_sz: int | None = None, model_type: str = "unigram", lang: str = "en",
                 char_coverage: float | None = None, n_workers: int | None = None, model: bytes | None = None):
        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
        if vocab_sz is not None and int(vocab_sz) < len(SPECIAL_TOKENS) + 1:
            raise ValueError(f"vocab_sz must be over {len(SPECIAL_TOKENS)}, got {vocab_sz}")
        self.lang = _check_lang(lang)
        self.vocab_sz = None if vocab_sz is None else int(vocab_sz)
        self.model_type = model_type
        self.char_coverage = float(char_coverage if char_coverage is not None else 0.99999 if lang.split("-")[0] in _EU_LANGS
                                   else 0.9998)
        self.n_workers = _default_workers() if n_workers is None else max(1, int(n_workers))
        self._model: bytes | None = None
        self._sp = None
        if model is not None:
            self._load(model)

    # ----------------------------------------------------------------- model
    def _load(self, model: bytes):
        sp = _spm().SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model)
        except Exception as e:
            raise ValueError(f"not a SentencePiece model ({e})") from None
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        if pieces[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise ValueError(f"a SentencePiece model for ULMFiT must start with fastai's special tokens {SPECIAL_TOKENS}, "
                             f"this one starts with {pieces[:len(SPECIAL_TOKENS)]}")
        self._model, self._sp, self._pieces = bytes(model), sp, pieces
        self.vocab_sz = len(pieces)

    @property
    def trained(self) -> bool:
        return self._model is not None

    @property
    def model_bytes(self) -> bytes:
        """The serialized model (what :meth:`save` writes as ``spm.model``)."""
        self._need_model()
        return self._model

    @property
    def pieces(self) -> list[str]:
        """The model's pieces, by id: fastai's special tokens first."""
        self._need_model()
        return list(self._pieces)

    def _need_model(self):
        if self._model is None:
            raise RuntimeError("this SentencePieceTokenizer has no model yet: call .train(texts) first")

    def train(self, texts: Sequence[str], max_sentences: int = 2_000_000, seed: int = 0, threads: int = 1) -> "SentencePieceTokenizer":
        """Train the model on ``texts`` (in memory, no files), up to ``max_sentences`` lines drawn with ``seed``.

        Deterministic: the same texts, settings and ``threads`` give the same model bytes, on any
        machine. SentencePiece's model depends on its thread count, so training uses one thread
        unless ``threads`` says otherwise (faster, and the same again only with the same count).
        Returns ``self``.
        """
        spm = _spm()
        texts = [str(t) for t in texts]
        if not any(t.strip() for t in texts):
            raise ValueError("cannot train SentencePiece on no text")
        vocab_sz = self.vocab_sz or _default_vocab_sz(texts)
        spm.set_random_generator_seed(seed)
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(texts), model_writer=out, vocab_size=vocab_sz, model_type=self.model_type,
            character_coverage=self.char_coverage, num_threads=max(1, int(threads)), input_sentence_size=max_sentences,
            shuffle_input_sentence=True, max_sentence_length=16384, hard_vocab_limit=False, unk_id=0, unk_piece="xxunk",
            bos_id=-1, eos_id=-1, pad_id=-1, user_defined_symbols=SPECIAL_TOKENS[1:], minloglevel=2)
        self._load(out.getvalue())
        return self

    def __getstate__(self) -> dict:  # the SentencePiece processor does not pickle: its model bytes do
        return {k: v for k, v in self.__dict__.items() if k not in ("_sp", "_pieces")}

    def __setstate__(self, state: dict):
        self.__dict__.update(state, _sp=None)
        if self._model is not None:
            self._load(self._model)

    # ---------------------------------------------------------------- tokens
    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        self._need_model()
        texts = [str(t) for t in texts]
        if not texts:
            return []
        ids = self._sp.encode(texts, num_threads=self.n_workers)
        get = self._pieces.__getitem__
        out = []
        for i in ids:
            toks = [BOS]
            toks += map(get, i)
            out.append(toks)
        return out

    def decode(self, tokens: Sequence[str]) -> str:
        """The text of ``tokens`` (SentencePiece's normalised form; ``xxbos`` dropped)."""
        self._need_model()
        return self._sp.decode_pieces([t for t in tokens if t != BOS])

    # ------------------------------------------------------------- settings
    def to_dict(self) -> dict:
        return {"name": self.name, "lang": self.lang, "model_type": self.model_type, "vocab_sz": self.vocab_sz,
                "char_coverage": self.char_coverage, "model_file": SPM_FILE,
                "model_sha256": _sha256(self._model)[:16] if self._model is not None else None}

    def _versions(self) -> str:
        return f"sentencepiece {_spm().__version__}"

    def save(self, folder: str | os.PathLike) -> None:
        """Write the model as ``folder/spm.model``."""
        from .artifact import atomic_write
        atomic_write(Path(folder) / SPM_FILE, self.model_bytes)


# ------------------------------------------------------------------------------------- factories
def get_tokenizer(name: str = "spacy", lang: str = "en", vocab_sz: int | None = None, model_type: str = "unigram",
                  n_workers: int | None = None) -> Tokenizer:
    """A tokenizer by name: ``"spacy"`` (fastai's default) or ``"sentencepiece"`` (untrained: call ``.train(texts)``)."""
    key = str(name).lower()
    if key == "spacy":
        if vocab_sz is not None:
            raise ValueError("vocab_sz is a SentencePiece setting; the spaCy tokenizer has no vocabulary of its own")
        return SpacyTokenizer(lang=lang, n_workers=n_workers)
    if key in ("sentencepiece", "spm"):
        return SentencePieceTokenizer(vocab_sz=vocab_sz, model_type=model_type, lang=lang, n_workers=n_workers)
    raise ValueError(f"unknown tokenizer {name!r}: use 'spacy' or 'sentencepiece'")


def tokenizer_from_dict(d: dict, folder: str | os.PathLike | None = None, n_workers: int | None = None) -> Tokenizer:
    """The tokenizer :meth:`Tokenizer.to_dict` described; a SentencePiece model is read from ``folder/spm.model``.

    A model file that is not the one the settings were saved with (``model_sha256``) is an error.
    """
    if not isinstance(d, dict) or "name" not in d:
        raise ValueError(f"tokenizer settings must be a dict with a 'name', got {d!r}")
    name = d["name"]
    if name == "spacy":
        if d.get("rules", "fastai") != "fastai":
            raise ValueError(f"unknown rules {d['rules']!r} for the spaCy tokenizer (only 'fastai')")
        return SpacyTokenizer(lang=d.get("lang", "en"), n_workers=n_workers)
    if name == "sentencepiece":
        if folder is None:
            raise ValueError("a SentencePiece tokenizer needs the model folder that holds its spm.model")
        path = Path(folder) / d.get("model_file", SPM_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model {path} is missing: the folder was saved without it, or copied partly")
        tok = SentencePieceTokenizer(model_type=d.get("model_type", "unigram"), lang=d.get("lang", "en"),
                                     char_coverage=d.get("char_coverage"), n_workers=n_workers, model=path.read_bytes())
        want = d.get("model_sha256")
        if want and tok.to_dict()["model_sha256"] != want:
            raise ValueError(f"{path} is not the SentencePiece model these settings were saved with "
                             f"(sha256 {tok.to_dict()['model_sha256']}, expected {want})")
        return tok
    raise ValueError(f"unknown tokenizer {name!r} in settings: use 'spacy' or 'sentencepiece'")


Tokenizer.from_dict = staticmethod(tokenizer_from_dict)


# ---------------------------------------------------------------------------------------- cache
def token_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Where :func:`tokenize_cached` keeps its files: ``cache_dir``, else ``$ULMFIT_TOKEN_CACHE``,
    else ``~/.cache/ulmfit_callbacks/tokens``; ``None`` when ``ULMFIT_TOKEN_CACHE`` is ``0`` or ``off``."""
    env = os.environ.get("ULMFIT_TOKEN_CACHE", "").strip()
    if env.lower() in ("0", "off", "false", "no", "none"):
        return None
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(env).expanduser() if env else _DEFAULT_CACHE


def _texts_key(texts: list[str], tokenizer: Tokenizer) -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT}\n{tokenizer.fingerprint}\n{tokenizer._versions()}\n{len(texts)}\n".encode())
    pack = struct.Struct("<Q").pack
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(pack(len(b)))
        h.update(b)
    return h.hexdigest()


def _write_cache(path: Path, key: str, tokens: list[list[str]]):
    from .artifact import atomic_write
    stoi = dict.fromkeys(chain.from_iterable(tokens))
    vocab = list(stoi)
    for i, t in enumerate(vocab):
        stoi[t] = i
    n = sum(map(len, tokens))
    ids = np.fromiter(map(stoi.__getitem__, chain.from_iterable(tokens)), dtype=np.int32, count=n)
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    meta = json.dumps({"format": CACHE_FORMAT, "key": key}).encode()
    voc = json.dumps(vocab, ensure_ascii=False).encode("utf-8", "surrogatepass")
    atomic_write(path, lambda f: np.savez(f, meta=np.frombuffer(meta, np.uint8), vocab=np.frombuffer(voc, np.uint8),
                                          ids=ids, lengths=lengths))


def _read_cache(path: Path, key: str, n_texts: int) -> list[list[str]] | None:
    """The cached tokens, or None when the file is missing, unreadable or not for ``key``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            vocab = json.loads(z["vocab"].tobytes().decode("utf-8", "surrogatepass"))
            ids, lengths = z["ids"], z["lengths"]
        if meta != {"format": CACHE_FORMAT, "key": key} or len(lengths) != n_texts or int(lengths.sum()) != len(ids) \
                or (len(ids) and (ids.min() < 0 or ids.max() >= len(vocab))) or (len(lengths) and lengths.min() < 0):
            raise ValueError("content does not match its key")
    except Exception as e:  # corrupted or truncated: tokenise again and rewrite
        warnings.warn(f"ignoring unreadable token cache {path} ({type(e).__name__}: {e}); tokenising again", stacklevel=3)
        return None
    flat = np.empty(len(vocab), dtype=object)
    flat[:] = vocab
    flat = flat[ids]
    ends = np.cumsum(lengths).tolist()
    return [flat[a:b].tolist() for a, b in zip([0] + ends[:-1], ends)]


def tokenize_cached(texts: Sequence[str], tokenizer: Tokenizer | None = None,
                    cache_dir: str | os.PathLike | None = None) -> list[list[str]]:
    """``tokenizer(texts)`` (default: :class:`SpacyTokenizer`), read from the disk cache when these texts
    were tokenised by the same tokenizer before, else computed and written there.

    The file is named by a hash of the texts' content, the tokenizer's :attr:`~Tokenizer.fingerprint`
    and its library versions; it is written atomically, and a corrupted file is ignored and
    rewritten. Folder: see :func:`token_cache_dir` (``ULMFIT_TOKEN_CACHE=0`` turns the cache off).
    Equal tokens share one string object in the returned lists.
    """
    tokenizer = SpacyTokenizer() if tokenizer is None else tokenizer
    texts = [str(t) for t in texts]
    folder = token_cache_dir(cache_dir)
    if folder is None or not texts:
        return tokenizer(texts)
    key = _texts_key(texts, tokenizer)
    path = folder / f"{tokenizer.name}-{key[:40]}.npz"
    cached = _read_cache(path, key, len(texts))
    if cached is not None:
        return cached
    tokens = tokenizer(texts)
    try:
        _write_cache(path, key, tokens)
    except OSError as e:  # a read-only or full disk costs the cache, not the run
        warnings.warn(f"could not write the token cache {path}: {e}", stacklevel=2)
    return tokens


def tokenize(texts: Sequence[str], n_workers: int = 0) -> list[list[str]]:
    """fastai's default tokenisation (spaCy blank English + fastai's rules), in input order.

    Same tokens as the former ``data.tokenize``; ``n_workers`` processes (0: this process).
    """
    return SpacyTokenizer("en", n_workers=n_workers)(texts)
