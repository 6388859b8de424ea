"""Peak training memory of the BPT3C classifier: 5,000-token documents vs max_len-token documents.

Each measurement runs one forward+backward training step in a fresh subprocess and reports
its peak resident memory above the resident memory just before the step.

    python benchmarks/bpt3c_memory.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

warnings.filterwarnings("ignore")


def child(doc_len: int, bs: int, max_len: int):
    import psutil
    import torch

    from ulmfit_callbacks import AWDLSTM, AWDLSTMConfig, BPT3CEncoder, PoolingClassifierHead, ULMFiTClassifier
    torch.manual_seed(0)
    cfg = AWDLSTMConfig()  # the paper's 400/1152/3
    model = ULMFiTClassifier(BPT3CEncoder(AWDLSTM(30000, cfg), bptt=70, max_len=max_len),
                             PoolingClassifierHead(1200, 6)).train()
    x = torch.randint(2, 30000, (bs, doc_len))
    base = psutil.Process().memory_info().rss
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import peak_rss_mib
    print(json.dumps(dict(peak_above_start_mib=peak_rss_mib() - base / 2**20)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=1400)
    ap.add_argument("--long", type=int, default=5000)
    ap.add_argument("--_child", type=int)
    args = ap.parse_args()
    if args._child:
        return child(args._child, args.bs, args.max_len)
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from common import record
    res = {}
    for n in (args.max_len, args.long):
        out = subprocess.run([sys.executable, __file__, "--_child", str(n), "--bs", str(args.bs), "--max-len",
                              str(args.max_len)], capture_output=True, text=True, check=True)
        res[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak_above_start_mib"]
        print(f"{n:6d}-token documents, bs {args.bs}: peak {res[n]:8.1f} MiB above start", flush=True)
    ratio = res[args.long] / res[args.max_len]
    print(f"ratio {ratio:.2f} (bar: <= 1.5)")
    record("bpt3c_memory", dict(bs=args.bs, max_len=args.max_len, peak_mib=res, ratio=ratio, config="400/1152/3"))


if __name__ == "__main__":
    main()
