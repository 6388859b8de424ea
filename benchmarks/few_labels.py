"""Few labels (the paper's Fig. 3 at CPU scale): n labelled examples, the LM fine-tuned on all the
training texts without labels (the user-path run's ``lm_fwd``), beside TF-IDF + LR on the same n.

    python benchmarks/few_labels.py --task trec6 --split heldout --sizes 100 200 --seeds 0 1 --name base
    python benchmarks/few_labels.py --task trec6 --split heldout --sizes 100 --seeds 0 1 --name e30 --set epochs=30 bs=16

``--split heldout`` samples from 90% of the training file and scores the other 10% (choosing a
recipe); ``--split test`` samples from the whole training file and scores the test split. The
fine-tuned LM comes from ``benchmarks/user_path.py run --task T --split S`` (run it first).
Without ``--set`` each size gets the recipe ``train-classifier`` picks for it
(``pipeline.classifier_recipe(n)``: the few-label recipe up to 1,000 texts, the default above);
``--set`` overrides fields of ``pipeline.DEFAULT_CLASSIFIER`` (and ``bs``) instead. ``--scratch``
also trains the same classifier from a random encoder with ``SCRATCH_CLASSIFIER``, the same
epochs, batch size and overrides (``--scratch-set`` adds its own; ``--scratch-only`` skips ours: tuning
the from-scratch baseline). Results: ``benchmarks/results/few_labels_<task>_<split>_<name>.json``.

    python benchmarks/few_labels.py --task trec6 --split heldout --sizes 100 200 --seeds 0 1 --name st2 --self-train 2

``--self-train R`` adds a self-training row: the forward classifier labels the training texts it was
not given, the ``R * n`` most confident of them (an equal share per predicted class) join the n
labelled ones, and a new classifier is trained from the fine-tuned LM on both.

``--ensemble`` also trains the backward classifier (from the user-path run's ``lm_bwd``) and
scores the forward + backward ensemble (``ForwardBackwardEnsemble``).

    python benchmarks/few_labels.py plot --task trec6 --split test --names few auto   # the sample-efficiency plot
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, REPO, record  # noqa: E402

from ulmfit_callbacks.baseline import TfidfBaseline  # noqa: E402
from ulmfit_callbacks.corpus import Corpus  # noqa: E402
from ulmfit_callbacks.ensemble import ForwardBackwardEnsemble, predict_proba  # noqa: E402
from ulmfit_callbacks.evaluation import classification_metrics  # noqa: E402
from ulmfit_callbacks.pipeline import DEFAULT_CLASSIFIER, SCRATCH_CLASSIFIER, classifier_recipe, load_artifact, train_classifier  # noqa: E402

MONITOR = 100  # evaluation rows shown during training (nothing is selected on them)


def _accuracy(ev: Corpus, probs, classes) -> float:
    return classification_metrics(ev.labels, probs.numpy(), classes)["accuracy"]


def _parse(kvs, bs=32):
    """``--set`` items as Recipe overrides, and the batch size (``bs`` unless given)."""
    out = {}
    for kv in kvs:
        k, v = kv.split("=")
        if k == "bs":
            bs = int(v)
            continue
        cur = getattr(DEFAULT_CLASSIFIER, k)
        out[k] = (v in ("1", "true", "True")) if isinstance(cur, bool) else \
            tuple(int(x) for x in v.split(",")) if k == "unfreeze_schedule" else type(cur)(v) if cur is not None else int(v)
    return out, bs


def pseudo_labels(learn, pool: Corpus, k: int) -> tuple[Corpus, list]:
    """The ``k`` texts of ``pool`` the classifier is surest of, an equal share per predicted class,
    labelled with its predictions; and their true labels (to report the pseudo-labels' accuracy)."""
    probs = predict_proba(learn, pool)
    conf, pred = probs.max(1)
    conf, pred = conf.numpy(), pred.numpy()
    per_class = max(1, k // len(learn.dls.classes))
    pick = np.concatenate([np.flatnonzero(pred == c)[np.argsort(-conf[pred == c])[:per_class]]
                           for c in range(len(learn.dls.classes))])
    out = pool.subset(pick)
    gold, out.labels = out.labels, [learn.dls.classes[i] for i in pred[pick]]
    return out, gold


def plot(a):
    """Accuracy against labelled examples (log scale), mean ± std over seeds, from the named runs: their
    per-seed rows are pooled (for the same size, seed and method a later name wins), so seeds run in
    several jobs count once each. Prints the pooled table too."""
    import json

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res = REPO / "benchmarks" / "results"
    runs, recipes = {}, []
    for name in a.names:
        r = json.loads((res / f"few_labels_{a.task}_{a.split}_{name}.json").read_text())["result"]
        for key, row in r["runs"].items():
            runs.setdefault(key, {}).update(row)
        recipes.append(" ".join(r["overrides"]) or "classifier_recipe(n)")
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, style in (("ours fwd", "o-"), ("from scratch", "s--"), ("TF-IDF + LR", "^:")):
        by_n = {}
        for key, row in runs.items():
            if k in row:
                by_n.setdefault(int(key.split()[0][2:]), []).append(row[k])
        if not by_n:
            continue
        n = np.array(sorted(by_n))
        m, sd = (np.array([f(by_n[i]) for i in n]) for f in (np.mean, np.std))
        for i, mi, si in zip(n, m, sd):
            print(f"n={i:<5d} {k:14s} accuracy {100 * mi:.1f}% ± {100 * si:.1f} ({len(by_n[i])} seeds)")
        ax.errorbar(n, 100 * (1 - m), yerr=100 * sd, fmt=style, capsize=3, label=k)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel(f"{a.split} error (%)")
    ax.set_title(f"{a.task}: ours = shipped LM, LM fine-tuned on all training texts;\nrecipes: {'; '.join(sorted(set(recipes)))}",
                 fontsize=8)
    ax.legend()
    ax.grid(alpha=0.3)
    out = res / f"few_labels_{a.task}_{a.split}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main():
    if sys.argv[1:2] == ["plot"]:
        ap = argparse.ArgumentParser(description="the sample-efficiency plot of earlier runs")
        ap.add_argument("--task", choices=["trec6", "mr", "bbc"], required=True)
        ap.add_argument("--split", choices=["heldout", "test"], required=True)
        ap.add_argument("--names", nargs="+", required=True)
        return plot(ap.parse_args(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["trec6", "mr", "bbc"], required=True)
    ap.add_argument("--split", choices=["heldout", "test"], required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--scratch", action="store_true")
    ap.add_argument("--scratch-only", action="store_true", help="only the from-scratch classifier (and TF-IDF)")
    ap.add_argument("--scratch-set", nargs="*", default=[], help="overrides for the from-scratch classifier only")
    ap.add_argument("--name", required=True)
    ap.add_argument("--ensemble", action="store_true", help="also the backward classifier and the fwd+bwd ensemble")
    ap.add_argument("--self-train", type=float, default=0, metavar="R", help="pseudo-labelled texts per labelled one")
    a = ap.parse_args()
    d = CACHE / "user_path" / a.task
    train_f, eval_f = (d / "train_inner.csv", d / "heldout.csv") if a.split == "heldout" else (d / "train.csv", d / "test.csv")
    lm = CACHE / "runs" / f"user_path_{a.task}_{a.split}" / "lm_fwd"
    if not (lm / "config.json").exists() or (a.ensemble and not (lm.with_name("lm_bwd") / "config.json").exists()):
        raise SystemExit(f"no fine-tuned LM at {lm}: run benchmarks/user_path.py run --task {a.task} --split {a.split} first")
    over, set_bs = _parse(a.set)
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
            ours, bs = (dataclasses.replace(DEFAULT_CLASSIFIER, **over), set_bs) if a.set else classifier_recipe(n)[:2]
            runs = [] if a.scratch_only else [("ours fwd", ours, bs, dict(lm=lm))]
            if a.scratch or a.scratch_only:
                meta, vocab, _ = load_artifact(lm)
                from ulmfit_callbacks.models.awd_lstm import AWDLSTMConfig
                s_over, s_bs = _parse(a.scratch_set, bs)
                runs.append(("from scratch", dataclasses.replace(SCRATCH_CLASSIFIER, **dict(dict(epochs=ours.epochs, **over), **s_over)),
                             s_bs, dict(vocab=vocab, config=AWDLSTMConfig.from_dict(meta["config"]))))
            for name, recipe, run_bs, kw in runs:
                t = time.time()
                learn, _ = train_classifier(sub, ev[:MONITOR], CACHE / f"few_{a.task}_{a.split}_{a.name}", recipe, bs=run_bs,
                                            seed=seed, classes=classes, **kw)
                res[name] = _accuracy(ev, predict_proba(learn, ev), learn.dls.classes)
                res[f"{name} seconds"] = round(time.time() - t, 1)
                if name == "ours fwd" and a.ensemble:
                    t = time.time()
                    learn_b, _ = train_classifier(sub, ev[:MONITOR], CACHE / f"few_{a.task}_{a.split}_{a.name}_bwd", recipe,
                                                  bs=run_bs, seed=seed, classes=classes, lm=lm.with_name("lm_bwd"),
                                                  backwards=True)
                    probs = ForwardBackwardEnsemble(learn, learn_b).predict_proba(ev)
                    for k, col in (("backward", "ours bwd"), ("ensemble", "ours fwd+bwd ensemble")):
                        res[col] = _accuracy(ev, probs[k], learn.dls.classes)
                    res["ours bwd seconds"] = round(time.time() - t, 1)
                if name == "ours fwd" and a.self_train:
                    t = time.time()
                    pseudo, gold = pseudo_labels(learn, train.subset(np.setdiff1d(np.arange(len(train)), idx)), int(a.self_train * n))
                    st = sub + pseudo
                    st_recipe, st_bs = (recipe, bs) if a.set else classifier_recipe(len(st))[:2]
                    learn2, _ = train_classifier(st, ev[:MONITOR], CACHE / f"few_{a.task}_{a.split}_{a.name}", st_recipe, bs=st_bs,
                                                 seed=seed, classes=classes, lm=lm)
                    res["ours fwd + self-training"] = _accuracy(ev, predict_proba(learn2, ev), learn2.dls.classes)
                    res["pseudo-label accuracy"] = float(np.mean([p_ == g_ for p_, g_ in zip(pseudo.labels, gold)]))
                    res["ours fwd + self-training seconds"] = round(time.time() - t, 1)
            print(f"{a.task} {a.split} n={n} seed={seed} {a.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()
                                                                              if "seconds" not in k), flush=True)
            rows[f"n={n} seed={seed}"] = res
    summary = {}
    for n in a.sizes:
        for k in ("ours fwd", "ours bwd", "ours fwd+bwd ensemble", "ours fwd + self-training", "pseudo-label accuracy",
                  "from scratch", "TF-IDF + LR"):
            vals = [r[k] for key, r in rows.items() if key.startswith(f"n={n} ") and k in r]
            if vals:
                summary[f"n={n} {k}"] = dict(mean=float(np.mean(vals)), std=float(np.std(vals)), n=len(vals))
    for k, v in summary.items():
        print(f"{k:28s} accuracy {v['mean']:.4f} ± {v['std']:.4f} ({v['n']} seeds)")
    record(f"few_labels_{a.task}_{a.split}_{a.name}", dict(task=a.task, split=a.split, sizes=a.sizes, seeds=a.seeds,
                                                          overrides=a.set, summary=summary, runs=rows))


if __name__ == "__main__":
    main()
