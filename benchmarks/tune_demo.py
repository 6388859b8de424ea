"""Choose the demo's classifier recipe on BBC's validation split (the test split is not read).

    python benchmarks/tune_demo.py --lm runs/demo_s42 --name lr02 --set lr=0.02

Trains the forward (or ``--direction bwd``) classifier on the demo's seed-42 training articles from
the stage-2 LM the demo saved, and records the accuracy and loss on the 222 validation articles.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, record, tokens  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lm", default="runs/demo_s42")
    ap.add_argument("--name", required=True)
    ap.add_argument("--direction", default="fwd")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--max-tokens", type=int, default=512)
    a = ap.parse_args()
    from ulmfit_callbacks.corpus import Corpus, load_bbc_news
    from ulmfit_callbacks.demo import DEMO_SIZES, split_indices
    from ulmfit_callbacks.pipeline import train_classifier
    df = load_bbc_news(verbose=False)
    train, valid, _ = split_indices(len(df), 42)
    toks = tokens(df.text.tolist(), "bbc_all")
    recipe = DEMO_SIZES["full"]["clf"]
    kw = {}
    for kv in a.set:
        k, v = kv.split("=")
        cur = getattr(recipe, k)
        kw[k] = (v == "1") if isinstance(cur, bool) else tuple(int(x) for x in v.split(",")) if k == "unfreeze_schedule" \
            else type(cur)(v) if cur is not None else int(v)
    recipe = dataclasses.replace(recipe, **kw)
    t = time.time()
    corpus = Corpus(toks, df.label.tolist(), df.text.tolist())
    _, m = train_classifier(corpus.subset(train), corpus.subset(valid), CACHE / f"tune_{a.name}", recipe,
                            lm=Path(a.lm) / f"lm_{a.direction}", backwards=a.direction == "bwd",
                            max_tokens=a.max_tokens or None, seed=42)
    m["seconds"] = round(time.time() - t, 1)
    print(a.name, recipe, m)
    record(f"tune_demo_{a.name}", dict(recipe=dataclasses.asdict(recipe), max_tokens=a.max_tokens, metrics=m, lm=a.lm))


if __name__ == "__main__":
    main()
