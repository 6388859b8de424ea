"""One short check of the library on a GPU (issue #15, "Real hardware"): run it once where there is one.

    python benchmarks/gpu_check.py                 # CUDA, paper-sized LM; well under 5 min on one H100
    python benchmarks/gpu_check.py --device cpu    # smoke test of the script itself: tiny sizes

Synthetic data (Zipf-distributed tokens; for the classifier, a class-marker token planted a few
times per document), so it needs no data set and no tokeniser. Every check prints PASS, FAIL or
SKIP; results and timings go to ``benchmarks/results/gpu_check.json`` (``gpu_check_cpu.json`` for the
smoke test; ``common.record``);
the exit status is the number of failures.

1. placement: batches, model, hidden state on the device; predictions back on the host;
2. cuDNN: the LSTM gets one flat weight buffer (no "not part of single contiguous chunk of memory"
   warning), the same outputs as separate weights; time per layer call both ways;
3. fused loss vs plain cross-entropy on the device, fp32 / bf16 / fp16 inputs: value and gradients
   against fp64, and time;
4. BPT3C: synchronising CUDA calls per classifier forward (``torch.cuda.set_sync_debug_mode``): 1;
5. training, LM and classifier, fp32 / bf16 (``BF16Autocast``) / fp16 (fastai's ``MixedPrecision``):
   finite losses that fall, the decoder input in the expected dtype, the loss scale in use;
   seconds per batch;
6. prediction pass (``get_preds``) of the classifier: time, input order;
7. checkpoint: the CUDA generators' states saved and restored;
8. LM training and inference tokens/s, ours (fused loss) vs fastai's ``AWD_LSTM`` (cuDNN), same
   sizes and batches, fp32 / fp16 (autocast + ``GradScaler``, what fastai's ``to_fp16`` does) /
   bf16; the bar: ours >= 1.5x fastai's training tokens/s in fp16 at the paper's size.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from common import record
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision

from ulmfit_callbacks import (
    AWDLSTMConfig,
    BF16Autocast,
    ClassifierLoader,
    LMLoader,
    ULMFiTDataLoaders,
    Vocab,
    ulmfit_classifier_learner,
    ulmfit_lm_learner,
)
from ulmfit_callbacks.checkpoint import load_checkpoint, save_checkpoint
from ulmfit_callbacks.losses import DecoderInput, linear_cross_entropy
from ulmfit_callbacks.models import awd_lstm
from ulmfit_callbacks.vocab import SPECIAL_TOKENS

SIZES = {  # base: the paper's AWD-LSTM; tiny: the CPU smoke test
    "base": dict(vocab=30000, emb_sz=400, n_hid=1152, n_layers=3, bs=64, bptt=70, lm_batches=30, docs=2048, doc_len=(50, 600)),
    "tiny": dict(vocab=300, emb_sz=16, n_hid=32, n_layers=2, bs=8, bptt=10, lm_batches=12, docs=256, doc_len=(5, 40)),
}
N_CLASSES = 4
results: dict = {"checks": {}}
failures = 0


def check(name: str, ok: bool | None, detail: str = ""):
    """Print and record one check; ``ok=None`` means skipped."""
    global failures
    status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    failures += ok is False
    results["checks"][name] = dict(status=status, detail=detail)
    print(f"{status:4}  {name}: {detail}", flush=True)


def sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------------------------------- data
def zipf_docs(rng, n: int, lens: tuple[int, int], vocab: int) -> list[np.ndarray]:
    first = len(SPECIAL_TOKENS) + N_CLASSES  # ids below are special tokens and the class markers
    return [first + np.minimum(rng.zipf(1.3, rng.integers(*lens)) - 1, vocab - first - 1) for _ in range(n)]


def lm_dls(s: dict, dev: torch.device, vocab: Vocab) -> ULMFiTDataLoaders:
    rng = np.random.default_rng(0)
    tokens = s["bs"] * (s["lm_batches"] * s["bptt"] + 1)
    docs = zipf_docs(rng, tokens // 100 + 1, (100, 101), s["vocab"])
    trn = LMLoader(docs, bs=s["bs"], bptt=s["bptt"], shuffle=True, seed=0)
    val = LMLoader(docs[: max(len(docs) // 8, 2 * s["bs"] * s["bptt"] // 100 + 2)], bs=s["bs"], bptt=s["bptt"])
    return ULMFiTDataLoaders(trn, val, vocab=vocab, kind="lm", device=dev)


def clf_dls(s: dict, dev: torch.device, vocab: Vocab) -> ULMFiTDataLoaders:
    rng = np.random.default_rng(1)
    docs, labels = zipf_docs(rng, s["docs"], s["doc_len"], s["vocab"]), rng.integers(0, N_CLASSES, s["docs"])
    for d, c in zip(docs, labels):  # the class marker, three times
        d[rng.integers(0, len(d), 3)] = len(SPECIAL_TOKENS) + c
    n = len(docs) * 7 // 8
    trn = ClassifierLoader(docs[:n], labels[:n], bs=s["bs"], shuffle=True, seed=0)
    val = ClassifierLoader(docs[n:], labels[n:], bs=2 * s["bs"])
    return ULMFiTDataLoaders(trn, val, vocab=vocab, kind="classifier", classes=list(range(N_CLASSES)), device=dev)


# ------------------------------------------------------------------------------------- training
class Probe(Callback):
    """Per training epoch: losses (kept on the device: no sync per batch) and time; the first batch's placement."""
    order = 100

    def __init__(self):
        self.losses, self.seconds, self.seen = [], [], {}

    def before_train(self):
        sync(self.dls.device)
        self.t = time.perf_counter()

    def after_pred(self):
        if self.training and not self.seen:
            p = self.pred
            self.seen = dict(x=self.xb[0].device.type, model=next(self.model.parameters()).device.type,
                             pred_dtype=str(p.hidden.dtype if isinstance(p, DecoderInput) else p.dtype))
            enc = getattr(self.model, "encoder", None)
            if getattr(enc, "hidden", None):
                self.seen["hidden"] = enc.hidden[0][0].device.type

    def after_loss(self):
        if self.training:
            self.losses.append(self.learn.loss.detach())

    def after_train(self):
        sync(self.dls.device)
        self.seconds.append((time.perf_counter() - self.t) / len(self.dl))
        if getattr(self.learn, "scaler", None) is not None:  # fastai's MixedPrecision
            self.scale = float(self.learn.scaler.get_scale())


def train(kind: str, precision: str, s: dict, dev: torch.device, vocab: Vocab, epochs: int) -> dict:
    torch.manual_seed(0)
    cfg = AWDLSTMConfig(emb_sz=s["emb_sz"], n_hid=s["n_hid"], n_layers=s["n_layers"])
    learn = ulmfit_lm_learner(lm_dls(s, dev, vocab), config=cfg) if kind == "lm" else \
        ulmfit_classifier_learner(clf_dls(s, dev, vocab), config=cfg, bptt=s["bptt"])
    probe = Probe()
    cbs = [probe] + {"fp32": [], "bf16": [BF16Autocast()], "fp16": [MixedPrecision()]}[precision]
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fastai's MixedPrecision on a CPU: "CUDA is not available"
        learn.fit(epochs, 1e-2, cbs=cbs)
    losses = torch.stack(probe.losses).float().cpu()
    k = max(len(losses) // 5, 1)
    out = dict(first_loss=float(losses[:k].mean()), last_loss=float(losses[-k:].mean()), finite=bool(torch.isfinite(losses).all()),
               seconds_per_batch=probe.seconds[-1], seen=probe.seen, valid=[float(v) for v in learn.recorder.values[-1]])
    if precision == "fp16":
        out["loss_scale"] = getattr(probe, "scale", None)
    return out, learn


def check_training(s: dict, dev: torch.device, vocab: Vocab):
    expected = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16"}
    results["training"] = {}
    clf32 = None
    for kind, epochs in (("lm", 2), ("classifier", 3)):
        for precision in ("fp32", "bf16", "fp16"):
            r, learn = train(kind, precision, s, dev, vocab, epochs)
            results["training"][f"{kind}_{precision}"] = r
            name = f"train {kind} {precision}"
            falls = r["finite"] and r["last_loss"] < r["first_loss"]
            check(name, falls, f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}, {1e3 * r['seconds_per_batch']:.1f} ms/batch")
            placed = r["seen"]["x"] == r["seen"]["model"] == dev.type and r["seen"].get("hidden", dev.type) == dev.type
            check(f"placement {kind} {precision}", placed, str(r["seen"]))
            if kind == "lm" and (precision != "fp16" or dev.type == "cuda"):
                check(f"decoder input dtype {precision}", r["seen"]["pred_dtype"] == expected[precision], r["seen"]["pred_dtype"])
            elif kind == "lm":
                check("decoder input dtype fp16", None, "fastai's MixedPrecision autocasts CUDA only")
            if precision == "fp16":
                check(f"loss scale {kind}", (r["loss_scale"] or 0) > 1 if dev.type == "cuda" else None, f"{r['loss_scale']}")
            if kind == "classifier" and precision == "fp32":
                clf32 = learn
    return clf32


# ------------------------------------------------------------------------------- single checks
def check_fused_loss(s: dict, dev: torch.device):
    torch.manual_seed(0)
    n, d, v = s["bs"] * s["bptt"], s["emb_sz"], s["vocab"]
    h64, w64 = torch.randn(n, d, device=dev, dtype=torch.float64) * 0.5, torch.randn(v, d, device=dev, dtype=torch.float64) * 0.1
    b64, y = torch.randn(v, device=dev, dtype=torch.float64) * 0.1, torch.randint(0, v, (n,), device=dev)
    ref = [t.clone().requires_grad_() for t in (h64, w64, b64)]
    F.cross_entropy(F.linear(*ref), y).backward()
    results["fused_loss"] = {}
    for dt, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)):
        if dev.type == "cpu" and dt == torch.float16:
            check("fused loss fp16", None, "fp16 GEMMs on a CPU: tests/test_losses.py covers them")
            continue
        times = {}
        for name, f in (("fused", linear_cross_entropy),
                        ("plain", lambda h, w, b, y: F.cross_entropy(F.linear(h, w.to(h.dtype), b.to(h.dtype)).float(), y))):
            for rep in range(4):  # the last of 3 timed calls after a warm-up
                h, w, b = h64.to(dt).requires_grad_(), w64.float().requires_grad_(), b64.float().requires_grad_()
                sync(dev)
                t = time.perf_counter()
                loss = f(h, w, b, y)
                loss.backward()
                sync(dev)
                times[name] = time.perf_counter() - t
            if name == "fused":
                errs = [float(loss.detach().double().sub(F.cross_entropy(F.linear(*[r.detach() for r in ref]), y)).abs())]
                errs += [float((g.grad.double() - r.grad).norm() / r.grad.norm()) for g, r in zip((h, w, b), ref)]
        results["fused_loss"][str(dt)] = dict(errors=errs, **{f"{k}_ms": 1e3 * t for k, t in times.items()})
        check(f"fused loss {str(dt)[6:]}", max(errs) < tol,
              f"loss and relative gradient errors {['%.1e' % e for e in errs]}; fused {1e3 * times['fused']:.1f} ms, "
              f"plain {1e3 * times['plain']:.1f} ms")


def check_cudnn_layout(s: dict, dev: torch.device):
    if dev.type != "cuda":
        return check("cuDNN flat weights", None, "CPU: no cuDNN")
    torch.manual_seed(0)
    layer = awd_lstm.WeightDropLSTM(s["emb_sz"], s["n_hid"], weight_p=0.5).to(dev)
    x = torch.randn(s["bs"], s["bptt"], s["emb_sz"], device=dev)
    state = tuple(torch.zeros(1, s["bs"], s["n_hid"], device=dev) for _ in range(2))
    flat = awd_lstm.cudnn_flat_weights
    out, timing, warned = {}, {}, {}
    for name, fn in (("flat", flat), ("separate", lambda ws: ws)):
        awd_lstm.cudnn_flat_weights = fn
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                layer.eval()
                out[name] = layer(x, state)[0]
                layer.train()
                for rep in range(11):  # 10 timed forward + backward calls after a warm-up
                    if rep == 1:
                        sync(dev)
                        t = time.perf_counter()
                    layer(x, state)[0].sum().backward()
                sync(dev)
                timing[name] = (time.perf_counter() - t) / 10
            warned[name] = any("contiguous chunk" in str(w.message) for w in caught)
        finally:
            awd_lstm.cudnn_flat_weights = flat
    same = torch.allclose(out["flat"], out["separate"], atol=1e-6, rtol=0)
    results["cudnn"] = dict(warned=warned, ms_per_call={k: 1e3 * v for k, v in timing.items()})
    check("cuDNN flat weights", not warned["flat"] and same,
          f"warning with flat weights: {warned['flat']}, with separate: {warned['separate']}; same outputs: {same}; "
          f"ms per layer call: flat {1e3 * timing['flat']:.2f}, separate {1e3 * timing['separate']:.2f}")


def check_bpt3c_syncs(learn, dev: torch.device):
    if dev.type != "cuda":
        return check("BPT3C host syncs", None, "CPU: nothing to wait for")
    x = learn.dls.valid.one_batch()[0]
    learn.model.eval()
    sync(dev)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            learn.model(x)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    n = sum("synchroniz" in str(w.message) for w in caught)
    chunks = -(-x.shape[1] // learn.model.encoder.bptt)
    results["bpt3c_syncs"] = dict(syncs=n, chunks=chunks)
    check("BPT3C host syncs", n <= 1, f"{n} synchronising call(s) for a batch of {chunks} chunks (expected 1: the lengths)")


def check_predictions(learn, dev: torch.device):
    dl = learn.dls.valid
    sync(dev)
    t = time.perf_counter()
    with learn.no_bar():
        preds, targs = learn.get_preds(dl=dl)
    seconds = time.perf_counter() - t
    learn.model.eval()
    with torch.no_grad():  # the first documents, in input order, straight through the model
        first = torch.cat([learn.model(dl.pad([i]).to(dev)).softmax(-1).cpu() for i in range(4)])
    in_order = torch.allclose(preds[:4], first, atol=1e-4)
    acc = float((preds.argmax(1) == targs).float().mean())
    results["predict"] = dict(seconds=seconds, docs=len(preds), accuracy=acc)
    check("prediction pass", in_order and preds.device.type == "cpu",
          f"{len(preds)} documents in {seconds:.2f} s, input order kept: {in_order}, accuracy {acc:.2f} ({N_CLASSES} classes)")


def check_checkpoint_rng(s: dict, dev: torch.device, vocab: Vocab, path):
    learn = ulmfit_lm_learner(lm_dls(s, dev, vocab), config=AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=1))
    learn.create_opt()
    save_checkpoint(learn, path)
    gen = (lambda: torch.rand(4, device=dev)) if dev.type == "cuda" else (lambda: torch.rand(4))
    a = gen()
    load_checkpoint(learn, path)
    same = torch.equal(a, gen())
    saved = torch.load(path, weights_only=True)["cuda_rng"]
    check(f"checkpoint {dev.type} RNG restored", same and (saved is not None) == torch.cuda.is_available(),
          f"same draws after restore: {same}; CUDA states saved: {0 if saved is None else len(saved)}")


def check_throughput(s: dict, dev: torch.device, steps: int = 12, warmup: int = 3):
    """Both LMs alternate step by step on the same batches (Adam, lr 1e-3); median seconds per step."""
    from lm_throughput import build, infer_step, train_step

    from ulmfit_callbacks.losses import LMLoss
    models = {w: build(w, s["vocab"], s["emb_sz"], s["n_hid"], s["n_layers"]).to(dev) for w in ("fastai", "ours")}
    LMLoss().attach(models["ours"])  # ulmfit_lm_learner's default
    opts = {w: torch.optim.Adam(m.parameters(), 1e-3) for w, m in models.items()}
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, s["vocab"], (s["bs"], s["bptt"] + 1), generator=g).to(dev) for _ in range(steps + warmup)]
    precisions = ["fp32", "bf16"] + (["fp16"] if dev.type == "cuda" else [])  # fp16 autocast: CUDA only
    ntok, out = s["bs"] * s["bptt"], {}
    for prec in precisions:
        dtype = dict(fp32=None, bf16=torch.bfloat16, fp16=torch.float16)[prec]
        scalers = {w: torch.amp.GradScaler(dev.type) if prec == "fp16" else None for w in models}
        times = {w: dict(train=[], infer=[]) for w in models}
        for i, b in enumerate(batches):
            x, y = b[:, :-1], b[:, 1:]
            for w, m in models.items():
                for kind, step in (("train", lambda: train_step(m.train(), opts[w], x, y, dtype, scalers[w])),
                                   ("infer", lambda: infer_step(m.eval(), x, dtype))):
                    sync(dev)
                    t = time.perf_counter()
                    step()
                    sync(dev)
                    if i >= warmup:
                        times[w][kind].append(time.perf_counter() - t)
        tok = {w: {k: ntok / float(np.median(v)) for k, v in t.items()} for w, t in times.items()}
        out[prec] = dict(tok_s=tok, train_ratio=tok["ours"]["train"] / tok["fastai"]["train"],
                         infer_ratio=tok["ours"]["infer"] / tok["fastai"]["infer"])
        bar = prec == "fp16" and dev.type == "cuda" and s is SIZES["base"]
        check(f"LM tokens/s {prec}", out[prec]["train_ratio"] >= 1.5 if bar else None,
              f"train ours {tok['ours']['train']:,.0f} vs fastai {tok['fastai']['train']:,.0f} ({out[prec]['train_ratio']:.2f}x); "
              f"inference {tok['ours']['infer']:,.0f} vs {tok['fastai']['infer']:,.0f} ({out[prec]['infer_ratio']:.2f}x)"
              + ("; bar: >= 1.5x in training" if bar else "; measured, no bar here"))
    results["throughput"] = out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    ap.add_argument("--size", choices=sorted(SIZES), help="default: base on a GPU, tiny on a CPU")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu for a smoke test")
    size = args.size or ("base" if dev.type == "cuda" else "tiny")
    s = SIZES[size]
    results.update(device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", size=size, sizes=s)
    print(f"gpu_check on {results['device']}, {size} sizes", flush=True)
    vocab = Vocab(SPECIAL_TOKENS + [f"w{i}" for i in range(s["vocab"] - len(SPECIAL_TOKENS))])
    t0 = time.perf_counter()
    check_cudnn_layout(s, dev)
    check_fused_loss(s, dev)
    clf = check_training(s, dev, vocab)
    check_bpt3c_syncs(clf, dev)
    check_predictions(clf, dev)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        check_checkpoint_rng(s, dev, vocab, f"{tmp}/ck.pt")
    check_throughput(s, dev)
    results["seconds"] = time.perf_counter() - t0
    name = "gpu_check" if dev.type == "cuda" else "gpu_check_cpu"
    record(name, results)
    print(f"{failures} failure(s) in {results['seconds']:.0f} s; results in benchmarks/results/{name}.json")
    raise SystemExit(failures)


if __name__ == "__main__":
    main()
