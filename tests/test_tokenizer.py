"""Pluggable tokenisers (issue #17): fastai-identical spaCy tokens, SentencePiece, settings, on-disk cache."""
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
import warnings

import pytest
from conftest import REPO, bbc_short_texts
from fastai.text.core import SpacyTokenizer as FastaiSpacy
from fastai.text.core import tokenize_texts

import ulmfit_callbacks.tokenizer as T
from ulmfit_callbacks.tokenizer import (
    MAX_PIECE_CHARS,
    SPECIAL_TOKENS,
    SentencePieceTokenizer,
    SpacyTokenizer,
    get_tokenizer,
    tokenize,
    tokenize_cached,
    tokenizer_from_dict,
)

GERMAN = ["Der Bundestag hat am Donnerstag das neue Gesetz beschlossen. Die Opposition war dagegen!",
          "„Wir schaffen das“, sagte sie – und ging. Es kostet 3,50 € bzw. zwei Dollar, z.B. im Café.",
          "Straße, Größe, Maß; HEUTE geht's los... GmbH & Co. KG (Berlin) – 1. FC Köln!!!"]


def fastai_tokens(texts, lang="en"):
    return [list(map(str, t)) for t in tokenize_texts(list(texts), n_workers=0, tok=FastaiSpacy(lang))]


@pytest.fixture(scope="module")
def bbc():
    """300 short BBC texts (headline + first paragraph) and 40 whole articles (paragraph breaks)."""
    df = bbc_short_texts()
    return df.text[:300].tolist() + df.body[300:340].tolist()


@pytest.fixture(scope="module")
def spm_tok(bbc):
    return SentencePieceTokenizer(vocab_sz=300, n_workers=1).train(bbc)


# ------------------------------------------------------------------------------------------ spaCy
def test_spacy_same_tokens_as_fastai(bbc):
    assert SpacyTokenizer(n_workers=0)(bbc) == fastai_tokens(bbc)
    assert tokenize(bbc[:50]) == fastai_tokens(bbc[:50])  # the module function the loaders re-export


def test_spacy_odd_whitespace_and_special_cases_as_fastai():
    """Random mixes of whitespace, emoticons, abbreviations and clitics: the chunk memo and its
    guard for special cases across chunks give spaCy's tokens exactly."""
    parts = [" ", " ", "  ", "\n", "\n\n", " \n", "\n ", "\t", "\xa0", "a", "A", "The", "THE", "'s", "'", ":", ")", "(", ":)", "(:",
             "a.m.", "10", ".", '"', "don't", "Mr.", "U.S.", "-", "x", "c", "s", "e.g.", ":-)", "^_^", "http://x.com/a", "#", "/",
             "aaaa", "no no no no", "xxbos", "<unk>", "&amp;", "...", "'cause", "ü", "’s"]
    rng = random.Random(0)
    texts = ["".join(rng.choice(parts) for _ in range(rng.randint(0, 25))) for _ in range(400)]
    assert SpacyTokenizer(n_workers=0)(texts) == fastai_tokens(texts)


def test_spacy_empty_inputs():
    tok = SpacyTokenizer(n_workers=0)
    assert tok([]) == []
    assert tok(["", "   "]) == fastai_tokens(["", "   "]) == [["xxbos"], ["xxbos"]]


def test_spacy_long_text_in_pieces(bbc, monkeypatch):
    long = "\n\n".join(bbc_short_texts().body[:150])
    assert len(long) > MAX_PIECE_CHARS
    pieces = T._pieces(long)
    assert len(pieces) > 1 and "".join(pieces) == long
    expected = []
    for p in fastai_tokens(pieces):
        expected += p[1:] if expected else p
    got = SpacyTokenizer(n_workers=0)(["short one", long])
    assert got[0] == ["xxbos", "short", "one"] and got[1] == expected and got[1].count("xxbos") == 1
    # worker processes give the same tokens in the same order
    monkeypatch.setattr(T, "_PARALLEL_MIN_CHARS", 0)
    texts = bbc[:60] + [long] + bbc[60:120]
    assert SpacyTokenizer(n_workers=2)(texts) == SpacyTokenizer(n_workers=0)(texts)


def test_spacy_other_language():
    de = SpacyTokenizer("de", n_workers=0)
    got = de(GERMAN)
    assert got == fastai_tokens(GERMAN, "de")
    assert "xxmaj" in got[0] and de != SpacyTokenizer("en") and de.to_dict() == {"name": "spacy", "lang": "de", "rules": "fastai"}


# ---------------------------------------------------------------------------------- SentencePiece
def test_sentencepiece_tokens(spm_tok, bbc):
    assert spm_tok.pieces[:9] == SPECIAL_TOKENS  # fastai's special tokens, in fastai's order, ids 0..8
    toks = spm_tok(bbc[:5] + [""])
    assert all(t[0] == "xxbos" and t.count("xxbos") == 1 for t in toks) and toks[-1] == ["xxbos"]
    assert spm_tok.decode(toks[0]) == " ".join(bbc[0].split())  # no rules: pieces decode to the (normalised) text
    assert any(p.startswith("\u2581") for p in toks[0]) and spm_tok([]) == []
    long = " ".join(bbc) * 3
    assert len(long) > MAX_PIECE_CHARS and spm_tok([long])[0][:20] == spm_tok([long[:2000]])[0][:20]
    again = SentencePieceTokenizer(vocab_sz=300, n_workers=2).train(bbc)  # deterministic (one training thread by default)
    assert again.model_bytes == spm_tok.model_bytes and again == spm_tok
    clone = pickle.loads(pickle.dumps(spm_tok))  # for DataLoader workers and the like
    assert clone == spm_tok and clone(bbc[:3]) == toks[:3]
    with pytest.raises(RuntimeError, match="train"):
        SentencePieceTokenizer()(["text"])


def test_sentencepiece_save_load_fresh_process(spm_tok, bbc, tmp_path):
    spm_tok.save(tmp_path)
    settings = spm_tok.to_dict()
    (tmp_path / "tokenizer.json").write_text(json.dumps(settings))
    (tmp_path / "texts.json").write_text(json.dumps(bbc[:30]))
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from ulmfit_callbacks.tokenizer import tokenizer_from_dict
        folder = Path({str(tmp_path)!r})
        tok = tokenizer_from_dict(json.loads((folder / "tokenizer.json").read_text()), folder)
        texts = json.loads((folder / "texts.json").read_text())
        print(json.dumps({{"tokens": tok(texts), "fingerprint": tok.fingerprint}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["tokens"] == spm_tok(bbc[:30]) and res["fingerprint"] == spm_tok.fingerprint


def test_sentencepiece_missing_or_wrong_model(spm_tok, bbc, tmp_path):
    with pytest.raises(FileNotFoundError, match="spm.model"):
        tokenizer_from_dict(spm_tok.to_dict(), tmp_path)
    with pytest.raises(ValueError, match="folder"):
        tokenizer_from_dict(spm_tok.to_dict())
    SentencePieceTokenizer(vocab_sz=400, n_workers=1).train(bbc).save(tmp_path)
    with pytest.raises(ValueError, match="not the SentencePiece model"):
        tokenizer_from_dict(spm_tok.to_dict(), tmp_path)


# --------------------------------------------------------------------------------------- settings
def test_to_dict_round_trip(spm_tok, tmp_path):
    sp = SpacyTokenizer(n_workers=0)
    assert sp.to_dict() == {"name": "spacy", "lang": "en", "rules": "fastai"}  # the settings saved before this module
    spm_tok.save(tmp_path)
    for tok in (sp, spm_tok):
        d = json.loads(json.dumps(tok.to_dict()))
        back = tokenizer_from_dict(d, tmp_path)
        assert type(back) is type(tok) and back == tok and back.to_dict() == tok.to_dict()
        assert back(["Hello World, it's 10a.m. :)"]) == tok(["Hello World, it's 10a.m. :)"])
    assert set(spm_tok.to_dict()) == {"name", "lang", "model_type", "vocab_sz", "char_coverage", "model_file", "model_sha256"}
    assert pickle.loads(pickle.dumps(sp)) == sp
    sp.save(tmp_path / "nothing")  # spaCy needs no files
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenizer_from_dict({"name": "wordpiece"})


def test_fingerprint(spm_tok, bbc):
    fp = SpacyTokenizer(n_workers=0).fingerprint
    assert len(fp) == 16 and fp == SpacyTokenizer(n_workers=2).fingerprint  # workers are not a setting
    assert SpacyTokenizer("de").fingerprint != fp
    untrained = {SentencePieceTokenizer(**kw).fingerprint for kw in
                 (dict(vocab_sz=300), dict(vocab_sz=400), dict(vocab_sz=300, model_type="bpe"), dict(vocab_sz=300, lang="ja"))}
    assert len(untrained) == 4 and spm_tok.fingerprint not in untrained | {fp}
    assert SentencePieceTokenizer(vocab_sz=300, n_workers=1).train(bbc[:100]).fingerprint != spm_tok.fingerprint  # other data


def test_get_tokenizer():
    assert isinstance(get_tokenizer(), SpacyTokenizer) and get_tokenizer("spacy", "de").lang == "de"
    sp = get_tokenizer("sentencepiece", vocab_sz=500, model_type="bpe")
    assert isinstance(sp, SentencePieceTokenizer) and (sp.vocab_sz, sp.model_type) == (500, "bpe") and not sp.trained
    for kwargs, match in [(dict(name="bert"), "unknown tokenizer"), (dict(lang="zz"), "no language 'zz'"), (dict(lang="english"), "language code"),
                          (dict(lang="zh"), "special tokens"),
                          (dict(name="sentencepiece", model_type="wordpiece"), "model_type"), (dict(vocab_sz=100), "vocab_sz")]:
        with pytest.raises(ValueError, match=match):
            get_tokenizer(**kwargs)


# ------------------------------------------------------------------------------------------ cache
class Counting(SpacyTokenizer):
    def __init__(self):
        super().__init__(n_workers=0)
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return super().__call__(texts)


def test_cache_hit(bbc, tmp_path, monkeypatch):
    monkeypatch.delenv("ULMFIT_TOKEN_CACHE", raising=False)
    tok = Counting()
    first = tokenize_cached(bbc, tok, tmp_path)
    assert tok.calls == 1 and len(list(tmp_path.iterdir())) == 1
    second = tokenize_cached(bbc, tok, tmp_path)
    assert tok.calls == 1 and second == first == fastai_tokens(bbc)
    assert second[0][0] is second[1][0]  # equal tokens share one string
    tokenize_cached(bbc[:-1] + [bbc[-1] + "!"], tok, tmp_path)  # other content, other file
    assert tok.calls == 2 and len(list(tmp_path.iterdir())) == 2
    monkeypatch.setenv("ULMFIT_TOKEN_CACHE", str(tmp_path / "env"))  # the folder from the environment
    tokenize_cached(bbc[:10], tok)
    assert tok.calls == 3 and len(list((tmp_path / "env").iterdir())) == 1
    assert tokenize_cached([], tok) == []


def test_cache_disabled_by_env(bbc, tmp_path, monkeypatch):
    tok = Counting()
    for off in ("0", "off", "OFF"):
        monkeypatch.setenv("ULMFIT_TOKEN_CACHE", off)
        assert tokenize_cached(bbc[:20], tok, tmp_path) == fastai_tokens(bbc[:20])
    assert tok.calls == 3 and not list(tmp_path.iterdir())


def test_corrupted_cache_rewritten(bbc, tmp_path, monkeypatch):
    monkeypatch.delenv("ULMFIT_TOKEN_CACHE", raising=False)
    tok = Counting()
    good = tokenize_cached(bbc[:50], tok, tmp_path)
    (path,) = tmp_path.iterdir()
    data = path.read_bytes()
    for bad in (b"garbage", data[: len(data) // 2]):
        path.write_bytes(bad)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert tokenize_cached(bbc[:50], tok, tmp_path) == good
        assert any("token cache" in str(x.message) for x in w)
    assert tok.calls == 3 and path.read_bytes() == data  # rewritten whole
    assert tokenize_cached(bbc[:50], tok, tmp_path) == good and tok.calls == 3


def test_cache_sentencepiece(spm_tok, bbc, tmp_path, monkeypatch):
    monkeypatch.delenv("ULMFIT_TOKEN_CACHE", raising=False)
    a = tokenize_cached(bbc[:40], spm_tok, tmp_path)
    b = tokenize_cached(bbc[:40], SpacyTokenizer(n_workers=0), tmp_path)  # same texts, other tokenizer: other file
    assert a == spm_tok(bbc[:40]) and b != a and len(list(tmp_path.iterdir())) == 2
