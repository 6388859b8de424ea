"""The user's path as the benchmark: the CLI's commands with their defaults, beside TF-IDF + LR.

    python benchmarks/user_path.py prepare                       # CSVs of TREC-6, MR, BBC (+ held-out splits)
    python benchmarks/user_path.py run --task mr --split heldout # choose defaults on held-out data
    python benchmarks/user_path.py run --task mr --split test     # the bar: test split, default flags

Each run executes exactly what a user types, in fresh processes:

    ulmfit finetune-lm TRAIN.csv --out lm_fwd           (and --backwards)
    ulmfit train-classifier TRAIN.csv --lm lm_fwd --out clf_fwd
    ulmfit evaluate EVAL.csv --model clf_fwd --baseline --train TRAIN.csv --json ...
    ulmfit evaluate EVAL.csv --model RUN   (forward + backward ensemble)

``--split heldout`` trains on 90% of the training CSV and evaluates on the other 10% (the test
split is not read); ``--split test`` trains on the whole training CSV and evaluates on the test
split. ``--lm-args`` / ``--clf-args`` add flags (the candidates compared when choosing defaults).
Results: ``benchmarks/results/user_path_<task>_<split>[_tag].json`` with command, date, machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, DATA, REPO, record  # noqa: E402

ULMFIT = str(Path(sys.executable).with_name("ulmfit"))
ROOT = CACHE / "user_path"


def prepare(args):
    for task in ("trec6", "mr"):
        out = ROOT / task
        out.mkdir(parents=True, exist_ok=True)
        tr, te = pd.read_csv(DATA / task / "train.csv"), pd.read_csv(DATA / task / "test.csv")
        tr[["text", "label"]].to_csv(out / "train.csv", index=False)
        te[["text", "label"]].to_csv(out / "test.csv", index=False)
    from ulmfit_callbacks.corpus import load_bbc_news
    from ulmfit_callbacks.demo import split_indices
    df = load_bbc_news(verbose=False)
    train, valid, test = split_indices(len(df), 42)  # the demo's seed-42 split; train+valid for the CLI
    out = ROOT / "bbc"
    out.mkdir(parents=True, exist_ok=True)
    df.iloc[np.sort(np.concatenate([train, valid]))][["text", "label"]].to_csv(out / "train.csv", index=False)
    df.iloc[np.sort(test)][["text", "label"]].to_csv(out / "test.csv", index=False)
    for task in ("trec6", "mr", "bbc"):
        tr = pd.read_csv(ROOT / task / "train.csv", dtype=str, keep_default_na=False)
        perm = np.random.default_rng(0).permutation(len(tr))
        n = len(tr) // 10
        tr.iloc[np.sort(perm[n:])].to_csv(ROOT / task / "train_inner.csv", index=False)
        tr.iloc[np.sort(perm[:n])].to_csv(ROOT / task / "heldout.csv", index=False)
        print(task, {f: len(pd.read_csv(ROOT / task / f)) for f in ("train.csv", "test.csv", "train_inner.csv", "heldout.csv")})


def _run(cmd: list[str], log, done: Path | None = None) -> float:
    """Run one CLI command; with ``done`` (its output) already there, skip it (a rerun resumes)."""
    if done is not None and done.exists():
        log.write(f"# skipped (exists): {done}\n")
        return float(json.loads(done.read_text()).get("seconds", "nan"))  # the earlier run's training time
    t = time.time()
    log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
    log.flush()
    r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log.name}")
    return time.time() - t


def run(args):
    d = ROOT / args.task
    train, ev = (d / "train_inner.csv", d / "heldout.csv") if args.split == "heldout" else (d / "train.csv", d / "test.csv")
    name = f"user_path_{args.task}_{args.split}" + (f"_{args.tag}" if args.tag else "")
    out = CACHE / "runs" / name
    out.mkdir(parents=True, exist_ok=True)
    lm_args, clf_args = shlex.split(args.lm_args), shlex.split(args.clf_args)
    res, secs = {}, {}
    with open(out / "log.txt", "a") as log:
        for direction in args.directions:
            b = ["--backwards"] if direction == "bwd" else []
            secs[f"finetune-lm {direction}"] = _run([ULMFIT, "finetune-lm", str(train), "--out", str(out / f"lm_{direction}"),
                                                     *b, *lm_args], log, out / f"lm_{direction}" / "metrics.json")
            secs[f"train-classifier {direction}"] = _run([ULMFIT, "train-classifier", str(train), "--lm",
                                                          str(out / f"lm_{direction}"), "--out", str(out / f"clf_{direction}"),
                                                          *clf_args], log, out / f"clf_{direction}" / "metrics.json")
            _run([ULMFIT, "evaluate", str(ev), "--model", str(out / f"clf_{direction}"), "--baseline", "--train", str(train),
                  "--json", str(out / f"eval_{direction}.json")], log)
            m = json.loads((out / f"eval_{direction}.json").read_text())
            res[f"ours {direction}"] = m["ulmfit"]["accuracy"]
            res["TF-IDF + LR"] = m["tfidf_lr"]["accuracy"]
        if len(args.directions) == 2:
            _run([ULMFIT, "evaluate", str(ev), "--model", str(out), "--json", str(out / "eval_ens.json")], log)
            res["ours fwd+bwd ensemble"] = json.loads((out / "eval_ens.json").read_text())["ulmfit"]["accuracy"]
    for k, v in res.items():
        print(f"{args.task} {args.split} {k:24s} accuracy {v:.4f}  error {100 * (1 - v):.1f}%")
    record(name, dict(task=args.task, split=args.split, train=str(train.name), eval=str(ev.name), accuracy=res,
                      seconds={k: round(v, 1) for k, v in secs.items()}, lm_args=args.lm_args, clf_args=args.clf_args,
                      threads=os.environ.get("OMP_NUM_THREADS", "default")))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare").set_defaults(func=prepare)
    p = sub.add_parser("run")
    p.add_argument("--task", choices=["trec6", "mr", "bbc"], required=True)
    p.add_argument("--split", choices=["heldout", "test"], required=True)
    p.add_argument("--directions", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    p.add_argument("--lm-args", default="", help="extra flags for finetune-lm")
    p.add_argument("--clf-args", default="", help="extra flags for train-classifier")
    p.add_argument("--tag", default="")
    p.set_defaults(func=run)
    a = ap.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
