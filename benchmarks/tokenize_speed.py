"""Tokenisation speed: fastai's ``tokenize_texts`` vs ours (spaCy, SentencePiece), and the token cache.

Data: ``general/train.csv`` of the shared data (all 22,889 paragraphs, 2.7 M words; ``--rows N``
takes the first N). Side by side, in one run:

- fastai: ``tokenize_texts(texts, n_workers=W, tok=SpacyTokenizer())`` (its rules + spaCy blank English),
- ours, spaCy: ``SpacyTokenizer(n_workers=W)``, from a cold start (engine built, empty chunk memo);
  its tokens are compared with fastai's, text by text,
- ours, SentencePiece: training (timed apart) on the same texts, then encoding with W threads,
- the cache: ``tokenize_cached`` with our spaCy tokenizer, first call (tokenise + write) and second
  call (read), in a fresh folder.

The fastai / ours spaCy pair runs ``--repeats`` times, alternating; the best time of each is kept.
tokens/s counts each tokenizer's own tokens; chars/s (input characters) compares SentencePiece
with the word tokenizers fairly.

    python benchmarks/tokenize_speed.py                 # 2 workers, whole train.csv
    python benchmarks/tokenize_speed.py --rows 5000 --workers 2 --repeats 1
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
from common import DATA, record  # noqa: E402

import ulmfit_callbacks.tokenizer as T  # noqa: E402
from ulmfit_callbacks.tokenizer import SentencePieceTokenizer, SpacyTokenizer, tokenize_cached  # noqa: E402


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def speed(name: str, n_tokens: int, n_chars: int, seconds: float) -> dict:
    r = dict(seconds=round(seconds, 3), tokens=n_tokens, tokens_per_s=round(n_tokens / seconds), chars_per_s=round(n_chars / seconds))
    print(f"{name:<34} {seconds:8.2f} s {r['tokens_per_s']:>12,} tokens/s {r['chars_per_s']:>12,} chars/s")
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=None, help="first N rows of general/train.csv (default: all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--spm-vocab", type=int, default=None, help="SentencePiece vocabulary (default: fastai's rule, at most 30k)")
    args = ap.parse_args()

    import pandas as pd
    from fastai.text.core import SpacyTokenizer as FastaiSpacy
    from fastai.text.core import tokenize_texts
    texts = pd.read_csv(DATA / "general" / "train.csv", dtype=str, keep_default_na=False).text.tolist()[: args.rows]
    n_chars, W = sum(map(len, texts)), args.workers
    load = round(os.getloadavg()[0], 2)  # other jobs on the machine share the cores with both tokenizers
    print(f"{len(texts):,} texts, {n_chars:,} characters, {W} workers, load average {load}")

    best_fastai = best_ours = float("inf")
    for _ in range(args.repeats):
        ref, dt = timed(lambda: tokenize_texts(texts, n_workers=W, tok=FastaiSpacy()))
        best_fastai = min(best_fastai, dt)
        T._ENGINES.clear()  # cold: the spaCy pipeline is built and the chunk memo starts empty, as in a new process
        ours, dt = timed(lambda: SpacyTokenizer(n_workers=W)(texts))
        best_ours = min(best_ours, dt)
    ref = [list(map(str, t)) for t in ref]
    n_tok = sum(map(len, ref))
    mismatched = sum(a != b for a, b in zip(ours, ref)) + abs(len(ours) - len(ref))
    res = dict(data=f"general/train.csv, {'all' if args.rows is None else f'first {args.rows}'} rows", texts=len(texts),
               chars=n_chars, workers=W, repeats=args.repeats, load_avg_1min_at_start=load)
    res["fastai_spacy"] = speed(f"fastai tokenize_texts ({W} workers)", n_tok, n_chars, best_fastai)
    res["ours_spacy"] = speed(f"ours SpacyTokenizer ({W} workers)", n_tok, n_chars, best_ours)
    res["ours_spacy"]["mismatched_texts_vs_fastai"] = mismatched
    print(f"  same tokens as fastai: {mismatched == 0} ({mismatched} texts differ)")

    T._ENGINES.clear()
    _, dt = timed(lambda: SpacyTokenizer(n_workers=0)(texts))
    res["ours_spacy_1_process"] = speed("ours SpacyTokenizer (this process)", n_tok, n_chars, dt)

    spm = SentencePieceTokenizer(vocab_sz=args.spm_vocab, n_workers=W)
    _, dt_train = timed(lambda: spm.train(texts))
    print(f"SentencePiece training: {dt_train:.1f} s ({spm.vocab_sz:,} pieces, unigram)")
    pieces, dt = timed(lambda: spm(texts))
    res["ours_sentencepiece"] = speed(f"ours SentencePiece ({W} threads)", sum(map(len, pieces)), n_chars, dt)
    res["ours_sentencepiece"].update(train_seconds=round(dt_train, 2), vocab_sz=spm.vocab_sz, model_type=spm.model_type)

    with tempfile.TemporaryDirectory() as folder:
        T._ENGINES.clear()
        tok = SpacyTokenizer(n_workers=W)
        _, dt_first = timed(lambda: tokenize_cached(texts, tok, folder))
        cached, dt_second = timed(lambda: tokenize_cached(texts, tok, folder))
        size = sum(p.stat().st_size for p in Path(folder).iterdir())
    res["cache_first_call"] = speed("cache, first call (tokenise+write)", n_tok, n_chars, dt_first)
    res["cache_second_call"] = speed("cache, second call (read)", n_tok, n_chars, dt_second)
    res["cache_second_call"].update(file_mib=round(size / 2**20, 2), same_tokens=cached == ref)

    f = res["fastai_spacy"]["tokens_per_s"]
    res["ratios_vs_fastai"] = {
        "ours_spacy_tokens_per_s": round(res["ours_spacy"]["tokens_per_s"] / f, 2),
        "ours_spacy_1_process_tokens_per_s": round(res["ours_spacy_1_process"]["tokens_per_s"] / f, 2),
        "sentencepiece_tokens_per_s": round(res["ours_sentencepiece"]["tokens_per_s"] / f, 2),
        "sentencepiece_chars_per_s": round(res["ours_sentencepiece"]["chars_per_s"] / res["fastai_spacy"]["chars_per_s"], 2),
        "cache_second_call_tokens_per_s": round(res["cache_second_call"]["tokens_per_s"] / f, 1),
    }
    print("ratios vs fastai:", res["ratios_vs_fastai"])
    record("tokenize_speed", res)


if __name__ == "__main__":
    main()
