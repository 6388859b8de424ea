"""An LM's validation perplexity per spaCy token, so that LMs with different tokenizers compare.

    python benchmarks/perplexity_per_word.py runs/stage1/multifit_fwd

The LM folder's ``metrics.json`` perplexity is per token of its own tokenizer (e.g. SentencePiece
pieces). Its total validation log-loss is ``ln(ppl) * n_own``; divided by the number of tokens
fastai's spaCy rules give the same texts (``n_spacy``) instead, it is a perplexity per spaCy token:
``exp(ln(ppl) * n_own / n_spacy)``. Results: ``benchmarks/results/perplexity_per_word_<folder>.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, record  # noqa: E402

from ulmfit_callbacks.corpus import read_texts  # noqa: E402
from ulmfit_callbacks.pipeline import model_tokenizer  # noqa: E402
from ulmfit_callbacks.tokenizer import SpacyTokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an LM folder saved by `ulmfit pretrain` (metrics.json, config.json)")
    ap.add_argument("--valid", default=str(DATA / "general" / "valid.csv"), help="the validation texts it was scored on")
    a = ap.parse_args()
    folder = Path(a.model)
    meta = json.loads((folder / "config.json").read_text())
    ppl = json.loads((folder / "metrics.json").read_text())["perplexity"]
    texts = read_texts(a.valid, log=lambda *_: None)[0]
    own = model_tokenizer(meta, folder)
    n_own = sum(map(len, own(texts)))
    n_spacy = sum(map(len, SpacyTokenizer()(texts)))
    per_word = math.exp(math.log(ppl) * n_own / n_spacy)
    print(f"{folder}: perplexity {ppl:.1f} per {own.name} token ({n_own:,} tokens), "
          f"{per_word:.1f} per spaCy token ({n_spacy:,} tokens)")
    record(f"perplexity_per_word_{folder.name}", dict(model=str(folder), tokenizer=own.to_dict(), perplexity=ppl,
                                                      own_tokens=n_own, spacy_tokens=n_spacy, per_spacy_token=per_word))


if __name__ == "__main__":
    main()
