"""Resident memory over a stage-1 run: ours (with and without releasing freed memory) vs fastai's AWD_LSTM.

    python benchmarks/memory_over_epoch.py --batches 600            # the three curves, fresh processes
    python benchmarks/memory_over_epoch.py --batches 1423 --only ours   # a whole epoch of ours

Each model trains in its own fresh process (one thread) on the general corpus
(``../shared/data/general``, tokenised once and cached), 200/400/3, bs 32, bptt 70 with the
paper's variable length, the CLI's precision (bf16 where the CPU has it). The process samples
its own RSS after every batch. Output: ``results/memory_over_epoch.json`` (curves, slope per
batch after batch 100 by least squares, peak) and ``results/memory_over_epoch.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, DATA, REPO, machine, record, tokens  # noqa: E402

VARIANTS = ("ours", "ours_no_release", "fastai")


def child(args):
    import pandas as pd
    import torch
    torch.set_num_threads(1)
    from fastai.callback.core import Callback, CancelFitException

    from ulmfit_callbacks import AWDLSTMConfig, BF16Autocast, Corpus, SlantedTriangularLR, lm_dataloaders, ulmfit_lm_learner
    from ulmfit_callbacks.cli import cpu_has_bf16
    from ulmfit_callbacks.memory import ReleaseMemory, rss_mib
    t0 = time.time()
    train = tokens(pd.read_csv(DATA / "general" / "train.csv").text.tolist(), "general_train")
    valid = tokens(pd.read_csv(DATA / "general" / "valid.csv").text.tolist(), "general_valid")
    after_tok = rss_mib()
    torch.manual_seed(0)
    dls = lm_dataloaders(Corpus(train), Corpus(valid), bs=32, bptt=70, max_vocab=30000, seed=0, device="cpu")
    after_num = rss_mib()
    bf16 = cpu_has_bf16()
    curve = []

    class Sample(Callback):
        order = 99  # after ReleaseMemory (95)

        def after_batch(self):
            if self.training:
                curve.append(round(rss_mib(), 1))
                if len(curve) >= args.batches:
                    raise CancelFitException

    cbs = [Sample()] + ([BF16Autocast()] if bf16 else [])
    if args.variant.startswith("ours"):
        learn = ulmfit_lm_learner(dls, config=AWDLSTMConfig(emb_sz=200, n_hid=400, n_layers=3), drop_mult=0.2)
        if args.variant == "ours_no_release":
            learn.remove_cbs([c for c in learn.cbs if isinstance(c, ReleaseMemory)])
        cbs.append(SlantedTriangularLR(0.01))
    else:
        from fastai.text.all import AWD_LSTM, Perplexity, accuracy, awd_lstm_lm_config, language_model_learner
        from fastai.text.data import DataLoaders
        # fastai's own model and learner over the same batches (our loader yields the same (x, y) layout)
        fdls = DataLoaders(dls.train, dls.valid, device="cpu")
        fdls.vocab = dls.vocab.itos
        learn = language_model_learner(fdls, AWD_LSTM, config=dict(awd_lstm_lm_config, emb_sz=200, n_hid=400, n_layers=3),
                                       pretrained=False, drop_mult=0.2, metrics=[accuracy, Perplexity()])
        cbs.append(SlantedTriangularLR(0.01))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, cbs=cbs)
    Path(args.out).write_text(json.dumps(dict(variant=args.variant, bf16=bf16, curve=curve, rss_after_tokens=after_tok,
                                              rss_after_numericalise=after_num, seconds=round(time.time() - t0, 1))))


def slope_kib(curve, start=100):
    import numpy as np
    y = np.asarray(curve[start:], dtype=np.float64)
    if len(y) < 10:
        return None
    return float(np.polyfit(np.arange(len(y)), y, 1)[0] * 1024)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=600)
    ap.add_argument("--only", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("--out")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    if a.child:
        a.variant = a.child
        return child(a)
    runs = {}
    for v in a.only:  # one at a time: fresh processes, nothing else on the cores
        out = CACHE / f"mem_{v}.json"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, __file__, "--child", v, "--batches", str(a.batches), "--out", str(out)],
                       check=True, env=env, cwd=REPO)
        r = json.loads(out.read_text())
        r.update(peak_mib=max(r["curve"]), slope_kib_per_batch_after_100=slope_kib(r["curve"]))
        print(f"{v:16s} peak {r['peak_mib']:.0f} MiB, slope after batch 100: {r['slope_kib_per_batch_after_100']:.1f} "
              f"KiB/batch, {len(r['curve'])} batches, {r['seconds']} s", flush=True)
        runs[v] = r
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for v, r in runs.items():
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], label=f"{v} ({r['slope_kib_per_batch_after_100']:.0f} KiB/batch)")
    ax.set_xlabel("training batch (200/400/3, bs 32, variable bptt 70, 1 thread)")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(machine().split(",")[0])
    ax.legend()
    fig.tight_layout()
    name = "memory_over_epoch" + (f"_{a.tag}" if a.tag else "")
    fig.savefig(REPO / "benchmarks" / "results" / f"{name}.png", dpi=110)
    record(name, {v: {k: r[k] for k in r if k != "curve"} | {"curve_every_10": r["curve"][::10]} for v, r in runs.items()})


if __name__ == "__main__":
    main()
