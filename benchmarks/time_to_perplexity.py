"""Time to a validation perplexity: our AWD-LSTM recipe vs fastai's ``language_model_learner`` recipe.

Both train a 200/400/3 AWD-LSTM LM (vocab 30k) from scratch on the same shuffled slice of
``../shared/data/general``, read through the same batches (our ``LMLoader``, bs 32, variable
BPTT around 70). Every ``--eval-every`` training tokens a copy of the model is evaluated on a
fixed sample of the validation file; the evaluation time is not counted as training time.
One run per process, so two runs can share the machine one core each (``--threads 1``):

    python benchmarks/time_to_perplexity.py run --recipe fastai --lr 1e-2 --threads 1
    python benchmarks/time_to_perplexity.py run --recipe ours --bf16 --drop-mult 0.2 --threads 1
    python benchmarks/time_to_perplexity.py report --threshold 400

Recipes:
- ``fastai``: fastai's ``language_model_learner(AWD_LSTM, drop_mult=1.0, pretrained=False)``
  (Adam, moms 0.8/0.7/0.8, wd 0.01, AR/TAR) and ``fit_one_cycle(1, lr)``: its default LM recipe.
- ``ours``: ``ulmfit_lm_learner`` (Adam mom 0.8, wd 0.01, AR/TAR) with ``SlantedTriangularLR(lr)``,
  optionally ``BF16Autocast``, a lower ``drop_mult`` and QRNN layers (``--arch qrnn``).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
import warnings

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import DATA, record, tokens  # noqa: E402
from fastai.callback.core import Callback  # noqa: E402

from ulmfit_callbacks import AWDLSTMConfig, BF16Autocast, Corpus, SlantedTriangularLR, lm_dataloaders, ulmfit_lm_learner  # noqa: E402

SIZES = dict(emb_sz=200, n_hid=400, n_layers=3)


def data(train_tokens: int, valid_tokens: int, seed=0):
    """The first ``train_tokens`` of the shuffled training documents, and a fixed validation sample."""
    import pandas as pd
    tr = tokens(pd.read_csv(DATA / "general" / "train.csv").text.tolist(), "general_train")
    va = tokens(pd.read_csv(DATA / "general" / "valid.csv").text.tolist(), "general_valid")
    rng = np.random.default_rng(seed)
    tr = [tr[i] for i in rng.permutation(len(tr))]
    cum = np.cumsum([len(t) for t in tr])
    tr = tr[: int(np.searchsorted(cum, train_tokens)) + 1]
    va = [va[i] for i in rng.permutation(len(va))]
    cum = np.cumsum([len(t) for t in va])
    va = va[: int(np.searchsorted(cum, valid_tokens)) + 1]
    return tr, va


@torch.no_grad()
def perplexity(m, valid_stream: torch.Tensor, bs=32, bptt=70) -> float:
    """Validation perplexity of ``m`` in eval mode (fp32), state carried over the stream."""
    m.eval().reset()
    n = (valid_stream.numel() - 1) // bs
    rows = valid_stream[: n * bs + 1]
    x_all, y_all = rows[:-1].view(bs, n), rows[1:].view(bs, n)
    tot, cnt = 0.0, 0
    for i in range(0, n, bptt):
        logits = m(x_all[:, i:i + bptt])[0]
        y = y_all[:, i:i + bptt]
        tot += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        cnt += y.numel()
    return math.exp(tot / cnt)


class Curve(Callback):
    """Every ``every`` training tokens, record (tokens, training seconds, validation perplexity)."""
    order = 100

    def __init__(self, valid_stream, every: int, eval_model):
        self.valid, self.every, self.eval_model = valid_stream, every, eval_model
        self.points = []

    def before_fit(self):
        self.tokens, self.next, self.eval_s, self.t0 = 0, self.every, 0.0, time.perf_counter()

    def after_batch(self):
        if not self.training:
            return
        self.tokens += self.xb[0].numel()
        if self.tokens >= self.next or self.iter == self.n_iter - 1:
            self.next += self.every
            t = time.perf_counter()
            train_s = t - self.t0 - self.eval_s
            self.eval_model.load_state_dict(self.learn.model.state_dict())
            ppl = perplexity(self.eval_model, self.valid)
            self.eval_s += time.perf_counter() - t
            self.points.append(dict(tokens=self.tokens, seconds=round(train_s, 1), perplexity=round(ppl, 2)))
            print(f"{self.tokens:>9,} tokens  {train_s:7.1f} s  valid perplexity {ppl:8.2f}", flush=True)


def run(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tr, va = data(args.tokens, args.valid_tokens)
    dls = lm_dataloaders(Corpus(tr), Corpus(va), bs=args.bs, bptt=70, max_vocab=30000, seed=args.seed)
    valid = torch.from_numpy(np.concatenate([dls.vocab.numericalize(t) for t in va]))
    if args.recipe == "fastai":
        from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, get_language_model, language_model_learner
        config = dict(awd_lstm_lm_config, **SIZES)
        learn = language_model_learner(dls, AWD_LSTM, config=config, drop_mult=args.drop_mult, pretrained=False)
        # fastai's weight dropout cannot be deep-copied: a second model, weights loaded at each check
        curve = Curve(valid, args.eval_every, get_language_model(AWD_LSTM, len(dls.vocab), config=config))
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(1, args.lr, cbs=[curve])
    else:
        learn = ulmfit_lm_learner(dls, config=AWDLSTMConfig(**SIZES, arch=args.arch), drop_mult=args.drop_mult)
        curve = Curve(valid, args.eval_every, copy.deepcopy(learn.model))
        cbs = [SlantedTriangularLR(args.lr), curve] + ([BF16Autocast()] if args.bf16 else [])
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, cbs=cbs)
    name = args.name or (f"{args.recipe}{'_qrnn' if args.arch == 'qrnn' else ''}_lr{args.lr:g}_dm{args.drop_mult:g}"
                         f"_bs{args.bs}" + ("_bf16" if args.bf16 else ""))
    out = dict(name=name, recipe=args.recipe, arch=args.arch, lr=args.lr, drop_mult=args.drop_mult, bs=args.bs, bf16=args.bf16,
               threads=args.threads, train_tokens=int(sum(map(len, tr))), valid_tokens=int(valid.numel()),
               curve=curve.points)
    record(f"ttp_{name}", out)


def report(args):
    from common import REPO
    runs = [json.loads(p.read_text()) for p in sorted((REPO / "benchmarks" / "results").glob("ttp_*.json"))]
    rows = []
    for r in runs:
        res = r["result"]
        hit = next((p for p in res["curve"] if p["perplexity"] <= args.threshold), None)
        rows.append((res["name"], res["curve"][-1]["perplexity"], hit))
        print(f"{res['name']:40s} final {res['curve'][-1]['perplexity']:8.1f}  "
              + (f"reaches {args.threshold:g} after {hit['tokens']:>9,} tokens, {hit['seconds']:7.1f} s" if hit
                 else f"never reaches {args.threshold:g}"))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for r in runs:
            c = r["result"]["curve"]
            for a, k in zip(ax, ("tokens", "seconds")):
                a.plot([p[k] for p in c], [p["perplexity"] for p in c], marker="o", ms=3, label=r["result"]["name"])
        for a, k in zip(ax, ("training tokens", "training seconds (1 thread)")):
            a.set_xlabel(k)
            a.set_ylabel("validation perplexity")
            a.set_yscale("log")
            a.axhline(args.threshold, color="grey", ls=":")
        ax[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(REPO / "benchmarks" / "results" / "time_to_perplexity.png", dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--recipe", choices=["fastai", "ours"], required=True)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--drop-mult", type=float, default=1.0)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--arch", choices=["lstm", "qrnn"], default="lstm", help="our encoder's layers (recipe ours)")
    p.add_argument("--tokens", type=int, default=500_000)
    p.add_argument("--valid-tokens", type=int, default=50_000)
    p.add_argument("--eval-every", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name")
    p.set_defaults(func=run)
    p = sub.add_parser("report")
    p.add_argument("--threshold", type=float, default=400)
    p.add_argument("--plot", action="store_true")
    p.set_defaults(func=report)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
