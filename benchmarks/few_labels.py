"""Few labels (the paper's Fig. 3 at CPU scale): n labelled examples, the LM fine-tuned on all the
training texts without labels (the user-path run's ``lm_fwd``), beside TF-IDF + LR on the same n.

    python benchmarks/few_labels.py --task trec6 --split heldout --sizes 100 200 --seeds 0 1 --name base
    python benchmarks/few_labels.py --task trec6 --split heldout --sizes 100 --seeds 0 1 --name e30 --set epochs=30 bs=16

``--split heldout`` samples from 90% of the training file and scores the other 10% (choosing a
recipe); ``--split test`` samples from the whole training file and scores the test split. The
fine-tuned LM comes from ``benchmarks/user_path.py run --task T --split S`` (run it first).
``--set`` overrides fields of ``pipeline.DEFAULT_CLASSIFIER`` (and ``bs``); ``--scratch`` also
trains the same classifier from a random encoder with ``SCRATCH_CLASSIFIER`` and the same overrides.
Results: ``benchmarks/results/few_labels_<task>_<split>_<name>.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, record  # noqa: E402

from ulmfit_callbacks.baseline import TfidfBaseline  # noqa: E402
from ulmfit_callbacks.corpus import Corpus  # noqa: E402
from ulmfit_callbacks.ensemble import predict_proba  # noqa: E402
from ulmfit_callbacks.pipeline import DEFAULT_CLASSIFIER, SCRATCH_CLASSIFIER, load_artifact, train_classifier  # noqa: E402

MONITOR = 100  # evaluation rows shown during training (nothing is selected on them)


def _parse(kvs):
    out, bs = {}, 32
    for kv in kvs:
        k, v = kv.split("=")
        if k == "bs":
            bs = int(v)
            continue
        cur = getattr(DEFAULT_CLASSIFIER, k)
        out[k] = (v in ("1", "true", "True")) if isinstance(cur, bool) else \
            tuple(int(x) for x in v.split(",")) if k == "unfreeze_schedule" else type(cur)(v) if cur is not None else int(v)
    return out, bs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["trec6", "mr", "bbc"], required=True)
    ap.add_argument("--split", choices=["heldout", "test"], required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--scratch", action="store_true")
    ap.add_argument("--name", required=True)
    a = ap.parse_args()
    d = CACHE / "user_path" / a.task
    train_f, eval_f = (d / "train_inner.csv", d / "heldout.csv") if a.split == "heldout" else (d / "train.csv", d / "test.csv")
    lm = CACHE / "runs" / f"user_path_{a.task}_{a.split}" / "lm_fwd"
    if not (lm / "config.json").exists():
        raise SystemExit(f"no fine-tuned LM at {lm}: run benchmarks/user_path.py run --task {a.task} --split {a.split} first")
    over, bs = _parse(a.set)
    train, ev = Corpus.read(train_f, "text", "label"), Corpus.read(eval_f, "text", "label", training=False)
    classes = sorted(set(train.labels))
    rows = {}
    for n in a.sizes:
        for seed in a.seeds:
            idx = np.random.default_rng(seed).permutation(len(train))[:n]
            sub = train.subset(idx)
            res = {}
            base = TfidfBaseline().fit(sub.texts, sub.labels)
            res["TF-IDF + LR"] = float(np.mean([p == y for p, y in zip(base.predict(ev.texts), ev.labels)]))
            runs = [("ours fwd", dataclasses.replace(DEFAULT_CLASSIFIER, **over), dict(lm=lm))]
            if a.scratch:
                meta, vocab, _ = load_artifact(lm)
                from ulmfit_callbacks.models.awd_lstm import AWDLSTMConfig
                runs.append(("from scratch", dataclasses.replace(SCRATCH_CLASSIFIER, **over),
                             dict(vocab=vocab, config=AWDLSTMConfig.from_dict(meta["config"]))))
            for name, recipe, kw in runs:
                t = time.time()
                learn, _ = train_classifier(sub, ev[:MONITOR], CACHE / f"few_{a.task}_{a.split}_{a.name}", recipe, bs=bs,
                                            seed=seed, classes=classes, **kw)
                p = predict_proba(learn, ev).argmax(1).numpy()
                res[name] = float(np.mean([learn.dls.classes[i] == y for i, y in zip(p, ev.labels)]))
                res[f"{name} seconds"] = round(time.time() - t, 1)
            print(f"{a.task} {a.split} n={n} seed={seed} {a.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()
                                                                              if "seconds" not in k), flush=True)
            rows[f"n={n} seed={seed}"] = res
    summary = {}
    for n in a.sizes:
        for k in ("ours fwd", "from scratch", "TF-IDF + LR"):
            vals = [r[k] for key, r in rows.items() if key.startswith(f"n={n} ") and k in r]
            if vals:
                summary[f"n={n} {k}"] = dict(mean=float(np.mean(vals)), std=float(np.std(vals)), n=len(vals))
    for k, v in summary.items():
        print(f"{k:28s} accuracy {v['mean']:.4f} ± {v['std']:.4f} ({v['n']} seeds)")
    record(f"few_labels_{a.task}_{a.split}_{a.name}", dict(task=a.task, split=a.split, sizes=a.sizes, seeds=a.seeds,
                                                          overrides=a.set, summary=summary, runs=rows))


if __name__ == "__main__":
    main()
