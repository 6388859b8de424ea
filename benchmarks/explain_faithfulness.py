"""Faithfulness of the explanations: the drop in the predicted class's probability when the top-k
attributed tokens are deleted, beside k random tokens, for each attribution method.

    python benchmarks/explain_faithfulness.py --model RUN/clf_fwd --test heldout.csv --n 500 --k 2 \\
        --name explain_faithfulness_trec6

Texts are the first ``--n`` rows of the CSV's ``text`` column (labels are not needed: the
predicted class is explained). The same random deletions are used for every method.
Results: ``benchmarks/results/<name>.json`` with command, date and machine.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from ulmfit_callbacks.explain import METHODS, faithfulness  # noqa: E402
from ulmfit_callbacks.pipeline import load_classifier  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="classifier folder (e.g. RUN/clf_fwd)")
    ap.add_argument("--test", required=True, help="CSV with a text column")
    ap.add_argument("--text-col", default="text")
    ap.add_argument("--n", type=int, default=500, help="first N texts (default: 500)")
    ap.add_argument("--k", type=int, default=2, help="tokens deleted per text (default: 2)")
    ap.add_argument("--n-random", type=int, default=5, help="random deletions per text (default: 5)")
    ap.add_argument("--steps", type=int, default=32, help="integrated gradients: path steps (default: 32)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default: {','.join(METHODS)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", required=True, help="results file name (benchmarks/results/NAME.json)")
    a = ap.parse_args(argv)
    texts = pd.read_csv(a.test, dtype=str, keep_default_na=False)[a.text_col].tolist()[: a.n]
    learn = load_classifier(a.model)  # fastai's default device: the GPU when there is one
    res = {}
    for m in a.methods.split(","):
        res[m] = r = faithfulness(learn, texts, k=a.k, n_random=a.n_random, method=m, steps=a.steps, seed=a.seed)
        print(f"{m:>10}: top-{a.k} drop {r['topk_drop']:.4f}  random drop {r['random_drop']:.4f}  "
              f"top-k > random on {r['frac_topk_gt_random']:.1%} of {r['n']} texts ({r['n_skipped']} too short)  "
              f"{r['seconds']:.0f} s", flush=True)
    best = max(res, key=lambda m: (res[m]["topk_drop"] - res[m]["random_drop"], res[m]["frac_topk_gt_random"]))
    print(f"most faithful: {best}")
    record(a.name, dict(model=str(a.model), test=str(a.test), n=len(texts), k=a.k, n_random=a.n_random, steps=a.steps,
                        seed=a.seed, threads=torch.get_num_threads(), methods=res, most_faithful=best))


if __name__ == "__main__":
    main()
