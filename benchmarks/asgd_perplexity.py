"""Validation perplexity with and without (NT-)ASGD weight averaging, same seed, same budget.

A CPU-sized AWD-LSTM LM on a slice of ``../shared/data/general``, trained with SGD (as in
AWD-LSTM) for a fixed number of epochs: no averaging, ASGD from a fixed epoch, and NT-ASGD.

    python benchmarks/asgd_perplexity.py --train-tokens 300000 --epochs 4
"""
from __future__ import annotations

import argparse
import math
import time
import warnings
from functools import partial

warnings.filterwarnings("ignore")
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import DATA, record  # noqa: E402
from fastai.callback.training import GradientClip  # noqa: E402
from fastai.optimizer import SGD  # noqa: E402

from ulmfit_callbacks import ASGDWeightAveraging, AWDLSTMConfig, Corpus, lm_dataloaders, tokenize, ulmfit_lm_learner  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-tokens", type=int, default=300_000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=20.0, help="SGD lr (AWD-LSTM uses 30 at full scale)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--emb-sz", type=int, default=100)
    ap.add_argument("--n-hid", type=int, default=300)
    args = ap.parse_args()
    train = pd.read_csv(DATA / "general" / "train.csv").text.tolist()
    valid = pd.read_csv(DATA / "general" / "valid.csv").text.tolist()
    toks, n = [], 0
    for t in tokenize(train[:8000], n_workers=2):
        toks.append(t)
        n += len(t)
        if n >= args.train_tokens:
            break
    vtoks = tokenize(valid, n_workers=2)
    cfg = AWDLSTMConfig(emb_sz=args.emb_sz, n_hid=args.n_hid, n_layers=2)
    runs = {"no averaging": None, f"ASGD from epoch {args.epochs // 2 + 1}": dict(start_epoch=args.epochs // 2),
            "NT-ASGD (nonmono=1)": dict(nonmono=1)}
    res = {}
    for name, kw in runs.items():
        torch.manual_seed(args.seed)
        dls = lm_dataloaders(Corpus(toks), Corpus(vtoks), bs=32, bptt=70, max_vocab=15000, seed=args.seed)
        learn = ulmfit_lm_learner(dls, config=cfg, opt_func=partial(SGD, mom=0.0), wd=1.2e-6)
        cbs = [ASGDWeightAveraging(**kw)] if kw is not None else []
        t = time.time()
        with learn.no_bar():
            learn.fit(args.epochs, args.lr, cbs=cbs + [GradientClip(0.25)])  # AWD-LSTM clips at 0.25
        per_epoch = [math.exp(v[1]) for v in learn.recorder.values]  # before validate() resets the recorder
        with learn.no_bar():
            loss = float(learn.validate()[0])
        res[name] = dict(valid_perplexity=math.exp(loss), seconds=round(time.time() - t, 1),
                         averaging_from_iter=(cbs[0].start_iter if cbs else None),
                         per_epoch_valid_ppl=per_epoch)
        print(f"{name:22s} valid ppl {math.exp(loss):8.2f}  ({res[name]['seconds']} s)", flush=True)
    record("asgd_perplexity", dict(train_tokens=n, valid_tokens=sum(map(len, vtoks)), epochs=args.epochs,
                                   config=cfg.to_dict(), runs=res))


if __name__ == "__main__":
    main()
