"""Decoder + cross-entropy, forward and backward: plain (logits stored) vs ``linear_cross_entropy``.

N = bs 32 x bptt 70 = 2,240 rows, vocabulary 30k, the decoder sizes of the paper (400) and of
the CPU config (200), bf16 and fp32; median of ``--reps`` calls after one warm-up.
``--compare-with COMMIT`` also times the ``losses.py`` of an earlier commit (git must see it).

    python benchmarks/fused_loss.py --compare-with 0251b59
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import REPO, record

from ulmfit_callbacks.losses import linear_cross_entropy

V, N = 30000, 2240


def _losses_at(commit: str):
    src = subprocess.run(["git", "show", f"{commit}:ulmfit_callbacks/losses.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"losses_{commit}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.linear_cross_entropy


def plain(h, w, b, y):
    return F.cross_entropy(F.linear(h, w.to(h.dtype), b.to(h.dtype)).float(), y)


def seconds(f, d, dt, reps):
    torch.manual_seed(0)
    h = torch.randn(N, d, dtype=dt, requires_grad=True)
    w = (torch.randn(V, d) * 0.05).requires_grad_()
    b = torch.zeros(V, requires_grad=True)
    y = torch.randint(0, V, (N,))
    ts = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        f(h, w, b, y).backward()
        ts.append(time.perf_counter() - t)
        h.grad = w.grad = b.grad = None
    return statistics.median(ts[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--blocks", type=int, nargs="+", default=[256, 1024, N])
    ap.add_argument("--compare-with", metavar="COMMIT")
    args = ap.parse_args()
    fns = {"plain": plain}
    if args.compare_with:
        fns[f"fused @ {args.compare_with}"] = _losses_at(args.compare_with)
    for blk in args.blocks:
        fns[f"fused, block {blk}"] = lambda h, w, b, y, blk=blk: linear_cross_entropy(h, w, b, y, block=blk)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; N {N}, vocab {V}; ms per forward+backward")
    res = {}
    for d in (400, 200):
        for dt in (torch.bfloat16, torch.float32):
            key = f"d={d} {str(dt).split('.')[-1]}"
            res[key] = {k: 1000 * seconds(f, d, dt, args.reps) for k, f in fns.items()}
            print(f"{key:15s} " + "  ".join(f"{k} {v:.0f}" for k, v in res[key].items()), flush=True)
    record("fused_loss", dict(rows=N, vocab=V, reps=args.reps, ms=res))


if __name__ == "__main__":
    sys.exit(main())
