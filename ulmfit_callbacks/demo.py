"""The main job: ULMFiT's three stages on the embedded BBC News data, beside the linear baseline.

Stage 1 is the general-domain LM shipped with the package (``pretrained="general"``); stage 2
fine-tunes it forward and backward on the BBC training articles; stage 3 trains both
classifiers; the test split is scored by each direction, their ensemble
(:class:`~ulmfit_callbacks.ForwardBackwardEnsemble`) and TF-IDF + logistic regression
(:class:`~ulmfit_callbacks.baseline.TfidfBaseline`) fitted on the same training articles.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from .artifact import write_json
from .baseline import TfidfBaseline
from .corpus import Corpus, load_bbc_news
from .ensemble import ForwardBackwardEnsemble
from .models.awd_lstm import AWDLSTMConfig
from .pipeline import DEFAULT_CLASSIFIER, DEFAULT_LM, SCRATCH_CLASSIFIER, finetune_lm, load_classifier, train_classifier

__all__ = ["DEMO_SIZES", "split_indices", "run_demo"]

# "full": the README's main job (about 10 minutes on 2 CPU cores). "tiny": a smoke run for
# tests (a 300-article sample; with pretrained=None a tiny random LM).
DEMO_SIZES = {
    "full": dict(lm=dataclasses.replace(DEFAULT_LM, epochs=1), clf=DEFAULT_CLASSIFIER,
                 max_tokens=512, n_docs=None,
                 scratch_config=AWDLSTMConfig(emb_sz=64, n_hid=256, n_layers=2)),
    "tiny": dict(lm=dataclasses.replace(DEFAULT_LM, epochs=1), clf=dataclasses.replace(DEFAULT_CLASSIFIER, epochs=2),
                 max_tokens=60, n_docs=300, scratch_config=AWDLSTMConfig(emb_sz=16, n_hid=32, n_layers=2)),
}


def split_indices(n: int, seed: int, test_frac: float = 0.2, valid_frac: float = 0.1):
    """``(train, valid, test)`` index arrays of a seeded random split (the demo's 70/10/20)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = int(test_frac * n), int(valid_frac * n)
    return perm[n_test + n_valid:], perm[n_test: n_test + n_valid], perm[:n_test]


def run_demo(out: str | os.PathLike = "runs/demo", size: str = "full", seed: int = 42, pretrained="general",
             device=None, cbs=(), log=print) -> dict:
    """Run the demo; returns (and writes to ``out/results.json``) the test accuracy of each model."""
    if size not in DEMO_SIZES:
        raise ValueError(f"size must be one of {sorted(DEMO_SIZES)}, got {size!r}")
    cfg = DEMO_SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(seed)
    log("== ULMFiT demo: BBC News (2,225 articles, 5 classes) ==")
    df = load_bbc_news()
    if cfg["n_docs"]:
        df = df.sample(cfg["n_docs"], random_state=seed).reset_index(drop=True)
    train, valid, test = split_indices(len(df), seed)
    log(f"split: {len(train)} train / {len(valid)} valid / {len(test)} test articles (seed {seed}); tokenising...")
    corpus = Corpus.from_texts(df.text.tolist(), df.label.tolist())
    trn, val, tst = corpus.subset(train), corpus.subset(valid), corpus.subset(test)
    if pretrained is None:
        log("stage 1: none (pretrained=None): the LM starts from random weights, so the classifier trains every "
            "layer from the start (no gradual unfreezing, one lr)")
    else:
        log(f"stage 1: the pretrained {pretrained!r} LM (loaded, not retrained)")
    clf_recipe = cfg["clf"] if pretrained is not None else dataclasses.replace(SCRATCH_CLASSIFIER, epochs=cfg["clf"].epochs)
    for direction, backwards in (("fwd", False), ("bwd", True)):
        log(f"[{direction}] stage 2: fine-tuning the LM on the training articles")
        _, lm_m = finetune_lm(trn, val, out / f"lm_{direction}", cfg["lm"], pretrained=pretrained,
                              config=None if pretrained is not None else cfg["scratch_config"], backwards=backwards,
                              seed=seed, cbs=list(cbs), device=device)
        log(f"[{direction}] LM validation perplexity {lm_m['perplexity']:.1f}")
        log(f"[{direction}] stage 3: classifier (" + ", ".join(type(c).__name__ for c in clf_recipe.callbacks(True)) + ")")
        train_classifier(trn, val, out / f"clf_{direction}", clf_recipe, lm=out / f"lm_{direction}", backwards=backwards,
                         max_tokens=cfg["max_tokens"], seed=seed, cbs=list(cbs), device=device)
    ens = ForwardBackwardEnsemble(load_classifier(out / "clf_fwd", device), load_classifier(out / "clf_bwd", device))
    probs = {k: v.numpy() for k, v in ens.predict_proba(tst).items()}
    y = tst.labels
    preds = {k: [ens.classes[i] for i in p.argmax(1)] for k, p in probs.items()}
    t_base = time.time()
    base = TfidfBaseline().fit(trn.texts, trn.labels)
    preds["TF-IDF + LR"] = base.predict(tst.texts)
    base_s = time.time() - t_base
    acc = {k: float(np.mean([a == b for a, b in zip(p, y)])) for k, p in preds.items()}
    log(f"\n== test accuracy ({len(test)} held-out articles) ==")
    for k, v in acc.items():
        note = f"   (fitted in {base_s:.0f} s on the same {len(train)} training articles)" if k == "TF-IDF + LR" else ""
        log(f"  {k:12s} {v:.4f}{note}")
    from .evaluation import classification_report_text, confusion_png
    log("\nper-class report (ensemble):\n" + classification_report_text(y, preds["ensemble"], ens.classes))
    confusion_png(y, preds["ensemble"], ens.classes, out / "confusion_matrix.png",
                  "BBC News test, forward+backward ensemble")
    minutes = (time.time() - t0) / 60
    res = dict(test_accuracy=acc, n_test=len(test), minutes=round(minutes, 2), seed=seed, size=size,
               pretrained=None if pretrained is None else str(pretrained))
    write_json(out / "results.json", res)
    log(f"saved: {out}/results.json, confusion_matrix.png, clf_fwd/lr_per_group.png, model folders; "
        f"took {minutes:.1f} min")
    log(f"try:   ulmfit predict --model {out} \"Shares rose after the bank cut interest rates\"")
    return res
