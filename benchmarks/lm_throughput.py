"""Training and inference tokens/s of our AWD-LSTM LM vs fastai's AWD_LSTM, same config, same batches.

Timing: both models alternate step by step in one process (same batches, same optimizer),
median of the steps after warm-up. Peak memory: each model trains alone in a fresh
subprocess, peak resident set size (ru_maxrss) reported.

    python benchmarks/lm_throughput.py                 # paper config and 200/400/3, fp32
    python benchmarks/lm_throughput.py --steps 30 --bf16
    python benchmarks/lm_throughput.py --bf16 --fused --qrnn --tag fused   # fused loss, QRNN option
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ulmfit_callbacks.losses import DecoderInput, LMLoss  # noqa: E402

CONFIGS = {"paper 400/1152/3": (400, 1152, 3), "cpu 200/400/3": (200, 400, 3)}


def build(which: str, vocab: int, emb: int, hid: int, layers: int):
    torch.manual_seed(0)
    if which == "fastai":
        from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, get_language_model
        return get_language_model(AWD_LSTM, vocab, config=dict(awd_lstm_lm_config, emb_sz=emb, n_hid=hid, n_layers=layers))
    from ulmfit_callbacks import AWDLSTMConfig, AWDLSTMLanguageModel
    arch = "qrnn" if which == "ours-qrnn" else "lstm"
    return AWDLSTMLanguageModel(vocab, AWDLSTMConfig(emb_sz=emb, n_hid=hid, n_layers=layers, arch=arch))


def train_step(model, opt, x, y, dtype: torch.dtype | None = None, scaler=None):
    """One optimizer step on ``x``'s device; ``dtype``: autocast to it (``None``: fp32); ``scaler``:
    a ``torch.amp.GradScaler`` (fp16)."""
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(x)[0]
    loss = LMLoss()(out, y) if isinstance(out, DecoderInput) else \
        F.cross_entropy(out.float().reshape(-1, out.size(-1)), y.reshape(-1))
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


@torch.no_grad()
def infer_step(model, x, dtype: torch.dtype | None = None):
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        model(x)


def timing(cfg, args):
    emb, hid, layers = cfg
    names = ("fastai", "ours") + (("ours-qrnn",) if args.qrnn else ())
    models = {w: build(w, args.vocab, emb, hid, layers) for w in names}
    for w, m in models.items():
        if w != "fastai" and args.fused:
            LMLoss().attach(m)  # ulmfit_lm_learner's default: decoder + loss fused in training
    opts = {w: torch.optim.Adam(m.parameters(), 1e-3) for w, m in models.items()}
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.bs, args.bptt + 1), generator=g) for _ in range(args.steps + args.warmup)]
    variants = [("fastai", False), ("ours", False)] + ([("ours", True)] if args.bf16 else [])
    if args.qrnn:
        variants += [("ours-qrnn", False)] + ([("ours-qrnn", True)] if args.bf16 else [])
    train_t = {v: [] for v in variants}
    infer_t = {v: [] for v in variants}
    for i, b in enumerate(batches):
        x, y = b[:, :-1], b[:, 1:]
        for v in variants:
            m = models[v[0]].train()
            t = time.perf_counter()
            train_step(m, opts[v[0]], x, y, torch.bfloat16 if v[1] else None)
            if i >= args.warmup:
                train_t[v].append(time.perf_counter() - t)
    for i, b in enumerate(batches[: max(args.warmup + 10, args.steps // 2)]):
        for v in variants:
            m = models[v[0]].eval()
            t = time.perf_counter()
            infer_step(m, b[:, :-1], torch.bfloat16 if v[1] else None)
            if i >= args.warmup:
                infer_t[v].append(time.perf_counter() - t)
    ntok = args.bs * args.bptt
    return {f"{w}{' bf16' if bf else ''}": dict(train_tok_s=ntok / statistics.median(train_t[(w, bf)]),
                                             infer_tok_s=ntok / statistics.median(infer_t[(w, bf)]))
            for (w, bf) in variants}


def peak_rss_child(which, cfg, args, bf16=False) -> float:
    cmd = [sys.executable, __file__, "--_child", which, "--_cfg", ",".join(map(str, cfg)), "--vocab", str(args.vocab),
           "--bs", str(args.bs), "--bptt", str(args.bptt), "--steps", str(args.mem_steps)] + (["--bf16"] if bf16 else []) \
        + (["--fused"] if args.fused else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def child(args):
    emb, hid, layers = map(int, args._cfg.split(","))
    model = build(args._child, args.vocab, emb, hid, layers).train()
    if args._child != "fastai" and args.fused:
        LMLoss().attach(model)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        b = torch.randint(0, args.vocab, (args.bs, args.bptt + 1), generator=g)
        train_step(model, opt, b[:, :-1], b[:, 1:], torch.bfloat16 if args.bf16 else None)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import peak_rss_mib
    print(peak_rss_mib())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=30000)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--bptt", type=int, default=70)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mem-steps", type=int, default=10)
    ap.add_argument("--bf16", action="store_true", help="also time ours under bf16 autocast")
    ap.add_argument("--fused", action="store_true", help="ours with the fused decoder + cross-entropy (the learner's default)")
    ap.add_argument("--qrnn", action="store_true", help="also time our encoder with QRNN layers (same sizes)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--memory-only", action="store_true", help="skip the timing, measure peak memory only")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--tag", help="suffix of the recorded results file (benchmarks/results/lm_throughput_<tag>.json)")
    ap.add_argument("--_child")
    ap.add_argument("--_cfg")
    args = ap.parse_args()
    if args._child:
        return child(args)
    torch.set_num_threads(torch.get_num_threads())
    res = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"vocab {args.vocab}, bs {args.bs}, bptt {args.bptt}, median of {args.steps} steps after {args.warmup} warm-up")
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        if args.memory_only:
            r = {w: {} for w in ["fastai", "ours"] + (["ours bf16"] if args.bf16 else [])
                 + (["ours-qrnn"] + (["ours-qrnn bf16"] if args.bf16 else []) if args.qrnn else [])}
        else:
            r = timing(cfg, args)
        for w in r:
            r[w]["peak_rss_mib"] = peak_rss_child(w.split()[0], cfg, args, bf16=w.endswith("bf16"))
        res[name] = r
        base = r["fastai"]
        if args.memory_only:
            print("\n".join(f"{name:17s} {w:12s} peak RSS {v['peak_rss_mib']:.0f} MiB" for w, v in r.items()))
            continue
        for w, v in r.items():
            print(f"{name:17s} {w:12s} train {v['train_tok_s']:7.0f} tok/s ({v['train_tok_s'] / base['train_tok_s']:.2f}x)  "
                  f"infer {v['infer_tok_s']:7.0f} tok/s ({v['infer_tok_s'] / base['infer_tok_s']:.2f}x)  "
                  f"peak RSS {v['peak_rss_mib']:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from common import record
    name = ("lm_memory" if args.memory_only else "lm_throughput") + (f"_{args.tag}" if args.tag else "")
    record(name, dict(vocab=args.vocab, bs=args.bs, bptt=args.bptt, steps=args.steps, results=res))


if __name__ == "__main__":
    main()
