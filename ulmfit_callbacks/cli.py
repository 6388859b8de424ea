"""``ulmfit``: the three ULMFiT stages, evaluation, prediction and a demo from the command line.

The CLI only parses and prints: the work is done by :mod:`~ulmfit_callbacks.pipeline` and
:mod:`~ulmfit_callbacks.demo`. The training flags are generated from the fields of
:class:`~ulmfit_callbacks.pipeline.Recipe` that each stage uses, so a flag cannot be accepted
and then ignored; their defaults are the stage's recipe (``--paper`` for the paper's).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path


class UsageError(Exception):
    """A bad argument or path: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------------- inputs
def _read(path: str, text_col: str, label_col: str | None, training: bool = True, tokenizer=None):
    """A :class:`~ulmfit_callbacks.corpus.Corpus` from a CSV, a folder-per-class tree, a ``.txt``
    file or ``bbc``, tokenised by ``tokenizer`` (a model's; default fastai's spaCy rules).
    Training skips empty texts and missing labels (and says which rows)."""
    from .corpus import Corpus
    if path != "bbc" and not Path(path).exists():
        raise UsageError(f"no such file or folder: {path}")
    return Corpus.read(path, text_col, label_col, training=training, tokenizer=tokenizer)


def _check_out(out: str, *inputs):
    """``--out`` must be a folder to write, not a file and not one of the command's own inputs."""
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder to write the model to")
    for i in inputs:
        if i is not None and Path(i).exists() and o.resolve() == Path(i).resolve():
            raise UsageError(f"--out {out} is this command's input model; writing there would replace it")


def _tokenizer(a):
    """The tokenizer a new LM gets from --tokenizer / --lang / --vocab-sz (printed)."""
    from .tokenizer import get_tokenizer
    if a.tokenizer == "spacy" and a.vocab_sz is not None:
        raise UsageError("--vocab-sz is the size of a SentencePiece model: use it with --tokenizer sentencepiece")
    tok = get_tokenizer(a.tokenizer, a.lang, a.vocab_sz)
    print(f"tokenizer: {tok.to_dict()['name']} ({a.lang})" + (", trained on the training texts" if a.tokenizer != "spacy" else ""))
    return tok


def _read_general(path: str, text_col: str, tokenizer=None):
    """A general corpus ``(train, valid or None)``: a CSV, a folder with train.csv (+ valid.csv), or a folder of .txt files."""
    from .corpus import Corpus
    p = Path(path)
    if p.is_dir() and (p / "train.csv").exists():
        train = Corpus.read(p / "train.csv", text_col, tokenizer=tokenizer)  # first: an untrained tokenizer learns here
        valid = Corpus.read(p / "valid.csv", text_col, tokenizer=tokenizer) if (p / "valid.csv").exists() else None
        return train, valid
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise UsageError(f"{path} holds no train.csv and no .txt files")
        return Corpus.from_texts([f.read_bytes().decode("utf-8", errors="replace") for f in files], tokenizer=tokenizer), None
    return _read(path, text_col, None, tokenizer=tokenizer), None


# -------------------------------------------------------------------------- device and precision
def _device(a):
    import torch

    if a.device == "auto":
        from fastai.torch_core import default_device
        return default_device()  # fastai's: the GPU when there is one
    try:
        d = torch.device(a.device)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {a.device!r}") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {a.device}: no CUDA GPU is available here")
    return d


def cpu_has_bf16() -> bool:
    """AVX-512 bf16 or AMX: oneDNN runs bf16 GEMMs and LSTMs natively."""
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _precision(a, device) -> tuple[str, list]:
    """``(name, callbacks)`` for ``--precision``; ``auto`` is bf16 where the hardware has it, else fp32."""
    import torch
    p = "bf16" if getattr(a, "bf16", False) else a.precision
    if p == "auto":
        ok = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
        p = "bf16" if ok else "fp32"
    if p == "bf16":
        from .precision import BF16Autocast
        return p, [BF16Autocast()]
    if p == "fp16":
        if device.type != "cuda":
            raise UsageError("--precision fp16 needs a CUDA GPU (fastai's MixedPrecision); on a CPU use bf16 or fp32")
        from fastai.callback.fp16 import MixedPrecision
        return p, [MixedPrecision()]
    return p, []


def _setup(a, starts_from: str | None = None):
    """Device and precision of a command, printed once at its start."""
    import torch
    device = _device(a)
    prec, cbs = _precision(a, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    # standard output carries the data: predict's lines, or a CSV written to "-"
    to_stdout = getattr(a, "out", None) == "-" or (a.command == "predict" and not getattr(a, "csv", None))
    print(f"ulmfit {a.command}: device {device} ({where}), precision {prec}"
          + (f"; starts from {starts_from}" if starts_from else ""), flush=True, file=sys.stderr if to_stdout else sys.stdout)
    return device, cbs


# ------------------------------------------------------------------------------------ recipe flags
_STAGE_FIELDS = {
    "pretrain": ("epochs", "lr", "stlr", "cut_frac", "ratio", "asgd", "nonmono", "asgd_start_epoch", "wd", "drop_mult"),
    "lm": ("epochs", "lr", "stlr", "cut_frac", "ratio", "discriminative", "decay", "asgd", "nonmono",
           "asgd_start_epoch", "wd", "drop_mult"),
    "classifier": ("epochs", "lr", "stlr", "cut_frac", "ratio", "discriminative", "decay", "gradual_unfreezing",
                   "unfreeze_schedule", "asgd", "nonmono", "asgd_start_epoch", "wd", "drop_mult"),
}
_HELP = dict(epochs="training epochs", lr="peak learning rate (STLR's lr_max)", stlr="slanted triangular lrs "
             "(--no-stlr: fastai's one-cycle)", cut_frac="STLR: fraction of iterations spent rising",
             ratio="STLR: lr_max / lr_min", discriminative="discriminative lrs (--no-discriminative: one lr)",
             decay="discriminative lrs: lr of layer l-1 = lr of layer l / decay (paper 2.6)",
             gradual_unfreezing="gradual unfreezing, last layer first", unfreeze_schedule="trainable "
             "parameter groups in each epoch, e.g. 1,2,3 (then all)", asgd="NT-ASGD weight averaging", nonmono="NT-ASGD non-monotone interval",
             asgd_start_epoch="average from this epoch on instead of the NT-ASGD trigger", wd="weight decay",
             drop_mult="multiplies every dropout (fastai's drop_mult)")


def _schedule(s: str):
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epoch counts, got {s!r}") from None
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"epoch counts must be >= 1, got {s!r}")
    return v


def _add_recipe(p, stage: str, base):
    from .pipeline import Recipe
    g = p.add_argument_group("training recipe (defaults: this stage's recipe, see benchmarks/RESULTS.md)")
    types = {f.name: f for f in dataclasses.fields(Recipe)}
    for name in _STAGE_FIELDS[stage]:
        flag, default = "--" + name.replace("_", "-"), getattr(base, name)
        if isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{_HELP[name]} (default: {'on' if default else 'off'})")
        elif name == "unfreeze_schedule":
            sched = ",".join(map(str, default)) if default else "one more group each epoch"
            g.add_argument(flag, type=_schedule, default=None, help=f"{_HELP[name]} (default: {sched})")
        else:
            typ = _positive_int if name in ("epochs", "nonmono") else int if types[name].type in ("int", "int | None") else float
            g.add_argument(flag, type=typ, default=None, help=f"{_HELP[name]} (default: {default})")
    g.add_argument("--paper", action="store_true", help="start from the paper's recipe instead of ours")
    if stage == "classifier":
        g.add_argument("--bs", type=_positive_int, default=None, help="batch size (default: 32; 16 with few labels)")
    else:
        g.add_argument("--bs", type=_positive_int, default=32, help="batch size (default: 32)")


def _recipe(a, stage: str, base):
    """``base`` with the recipe flags the user gave; checked before any data are read."""
    given = {n: getattr(a, n) for n in _STAGE_FIELDS[stage] if getattr(a, n, None) is not None}
    r = dataclasses.replace(base, **given)
    checks = [(r.lr > 0, f"--lr must be > 0, got {r.lr}"), (r.epochs >= 1, f"--epochs must be >= 1, got {r.epochs}"),
              (r.drop_mult >= 0, f"--drop-mult must be >= 0, got {r.drop_mult}"),
              (r.decay > 0, f"--decay must be > 0, got {r.decay}"),
              (0 < r.cut_frac < 1, f"--cut-frac must be in (0, 1), got {r.cut_frac}"),
              (r.ratio >= 1, f"--ratio must be >= 1, got {r.ratio}")]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)
    return r


def _model_flags_given(a) -> list[str]:
    return [f"--{k.replace('_', '-')}" for k in ("emb_sz", "n_hid", "n_layers", "arch") if getattr(a, k) is not None]


def _model_config(a):
    from .models.awd_lstm import AWDLSTMConfig
    d = AWDLSTMConfig(emb_sz=200, n_hid=400, n_layers=3)  # the shipped LM's size: CPU-sized
    return AWDLSTMConfig(emb_sz=a.emb_sz or d.emb_sz, n_hid=a.n_hid or d.n_hid, n_layers=a.n_layers or d.n_layers,
                         arch=a.arch or d.arch)


# --------------------------------------------------------------------------------------- commands
def cmd_demo(a):
    from .demo import run_demo
    pre = None if a.pretrained.lower() == "none" else a.pretrained
    device, cbs = _setup(a, f"the {pre!r} pretrained LM" if pre else "random weights (--pretrained none)")
    run_demo(a.out, a.size, a.seed, pretrained=pre, device=device, cbs=cbs)


def cmd_pretrain(a):
    from .checkpoint import EpochCheckpoint
    from .pipeline import PAPER_LM, PRETRAIN, pretrain_lm
    recipe = _recipe(a, "pretrain", dataclasses.replace(PAPER_LM, discriminative=False) if a.paper else PRETRAIN)
    _check_out(a.out)
    device, cbs = _setup(a, "random weights (stage 1)")
    train, valid = _read_general(a.corpus, a.text_col, _tokenizer(a))
    ckpt = EpochCheckpoint(Path(a.out) / "checkpoint.pt")  # stage 1 takes hours: a resumable state per epoch
    _, m = pretrain_lm(train, valid, a.out, _model_config(a), recipe, backwards=a.backwards, bs=a.bs, bptt=a.bptt,
                       max_vocab=a.max_vocab, cbs=cbs + [ckpt], device=device)
    print(f"stage 1 done: validation perplexity {m['perplexity']:.1f} -> {a.out}")


def cmd_finetune_lm(a):
    from .artifact import resolve_model
    from .pipeline import DEFAULT_LM, PAPER_LM, finetune_lm
    recipe = _recipe(a, "lm", PAPER_LM if a.paper else DEFAULT_LM)
    pre = None if a.pretrained.lower() == "none" else a.pretrained
    if pre is not None and _model_flags_given(a):
        raise UsageError(f"{', '.join(_model_flags_given(a))} set the size of a new LM; the pretrained LM "
                         f"{pre!r} has its own sizes (use --pretrained none to start a new one)")
    tok = None
    if pre is not None:
        if a.tokenizer != "spacy" or a.lang != "en" or a.vocab_sz is not None:
            raise UsageError(f"the pretrained LM {pre!r} brings its own tokenizer; --tokenizer, --lang and --vocab-sz "
                             "are for a new LM (--pretrained none)")
        from .pipeline import model_tokenizer
        folder = resolve_model(pre, a.backwards)  # a missing model fails before the data are read
        _check_out(a.out, folder)
        if (folder / "config.json").exists():
            tok = model_tokenizer(json.loads((folder / "config.json").read_text()), folder)
    else:
        tok = _tokenizer(a)
        _check_out(a.out)
    device, cbs = _setup(a, f"the pretrained LM {pre!r}" if pre else
                         "random weights (--pretrained none): expect far weaker classifiers than from a pretrained LM")
    texts = _read(a.data, a.text_col, None, tokenizer=tok)
    if a.unlabelled:
        extra = _read(a.unlabelled, a.text_col, None, tokenizer=texts.tokenizer)
        print(f"LM fine-tuning text: {len(texts):,} labelled-file texts + {len(extra):,} unlabelled texts ({a.unlabelled})")
        texts = texts + extra
    _, m = finetune_lm(texts, None, a.out, recipe, pretrained=pre, config=None if pre else _model_config(a),
                       backwards=a.backwards, bs=a.bs, bptt=a.bptt, max_vocab=a.max_vocab, cbs=cbs,
                       keep_pretrained_vocab=a.keep_pretrained_vocab and pre is not None, device=device)
    print(f"stage 2 done: validation perplexity {m['perplexity']:.1f} -> {a.out}")


def _class_weights(spec: str | None, labels, classes):
    if spec is None:
        return None
    import numpy as np
    import torch
    if spec == "balanced":
        counts = np.array([sum(str(l) == str(c) for l in labels) for c in classes], dtype=np.float64)
        w = len(labels) / (len(classes) * np.maximum(counts, 1))
    else:
        try:
            w = np.array([float(x) for x in spec.split(",")])
        except ValueError:
            raise UsageError(f"--class-weights must be 'balanced' or comma-separated numbers, got {spec!r}") from None
        if len(w) != len(classes):
            raise UsageError(f"--class-weights has {len(w)} weights for {len(classes)} classes {classes}")
    print("class weights: " + ", ".join(f"{c} {x:.3g}" for c, x in zip(classes, w)))
    return torch.tensor(w, dtype=torch.float32)


def cmd_train_classifier(a):
    from fastai.losses import CrossEntropyLossFlat

    from .pipeline import DEFAULT_CLASSIFIER, PAPER_CLASSIFIER, SCRATCH_CLASSIFIER, load_artifact, train_classifier
    meta = load_artifact(a.lm)[0]  # a missing or foreign LM folder fails before the data are read
    _check_out(a.out, a.lm)
    if meta["kind"] != "lm":
        raise UsageError(f"{a.lm} holds a {meta['kind']}, not a language model")
    if a.backwards and not meta["backwards"]:
        raise UsageError(f"{a.lm} is a forward LM: train the backward LM (finetune-lm --backwards) first")
    lm_m = json.loads((Path(a.lm) / "metrics.json").read_text()) if (Path(a.lm) / "metrics.json").exists() else {}
    from_scratch = "pretrained" in lm_m and lm_m["pretrained"] is None
    base = PAPER_CLASSIFIER if a.paper else (SCRATCH_CLASSIFIER if from_scratch else DEFAULT_CLASSIFIER)
    recipe = _recipe(a, "classifier", base)
    device, cbs = _setup(a, f"the fine-tuned LM {a.lm} ({'backward' if meta['backwards'] else 'forward'})")
    if from_scratch and not a.paper:
        print("the LM was fine-tuned from random weights, so the classifier trains every layer from the start "
              "with one lr (no gradual unfreezing, no discriminative lrs): a random encoder gives the head nothing "
              "to start from")
    from .pipeline import model_tokenizer
    tok = model_tokenizer(meta, a.lm)  # the LM's own tokens
    train = _read(a.data, a.text_col, a.label_col, tokenizer=tok)
    train, valid = (train, _read(a.valid, a.text_col, a.label_col, tokenizer=tok)) if a.valid else \
        train.split(0.1, a.seed, label_delim=";" if a.multi_label else None)
    bs = a.bs or 32
    if not a.paper and not from_scratch:
        from .pipeline import classifier_recipe
        base, few_bs, why = classifier_recipe(len(train))
        recipe, bs = _recipe(a, "classifier", base), a.bs or few_bs
        print(f"recipe: {why}; the recipe flags (--epochs, --bs, ...) override it")
    loss, classes = None, None
    if a.class_weights:
        if a.multi_label:
            raise UsageError("--class-weights is for single-label data")
        classes = sorted({str(l) for l in train.labels})
        loss = CrossEntropyLossFlat(weight=_class_weights(a.class_weights, train.labels, classes).to(device))
    _, m = train_classifier(train, valid, a.out, recipe, lm=a.lm, backwards=meta["backwards"], bs=bs,
                            max_tokens=a.max_tokens, multi_label=a.multi_label, seed=a.seed, cbs=cbs, loss_func=loss,
                            classes=classes, device=device)
    print(f"stage 3 done: validation accuracy {m['accuracy']:.4f} -> {a.out}")


def _load_model(model_dir, device):
    """A classifier folder's learner or a run folder's ensemble, and its (forward) DataLoaders: the
    tokenizer its texts need, its classes, whether it is multi-label."""
    from .ensemble import ForwardBackwardEnsemble
    from .pipeline import load_model
    try:
        model = load_model(model_dir, device)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    return model, (model.forward if isinstance(model, ForwardBackwardEnsemble) else model).dls


def _predict_probs(model, data):
    """``(probs, classes, multi_label)``, with progress lines on standard error for large inputs."""
    from .evaluation import predict_probs
    return predict_probs(model, data, log=lambda m: print(m, file=sys.stderr, flush=True))


def cmd_evaluate(a):
    import numpy as np

    from .evaluation import classification_metrics, classification_report_text, confusion_png
    if a.baseline and not a.train:
        raise UsageError("--baseline fits TF-IDF + logistic regression on --train FILE (the labelled training data)")
    from .corpus import label_parts
    device, _ = _setup(a, f"the classifier(s) in {a.model}")
    model, dls = _load_model(a.model, device)
    multi, model_classes = bool(dls.multi_label), [str(c) for c in dls.classes]
    trn = None
    if a.baseline:
        if multi:
            print("--baseline: TF-IDF + LR is fitted for single-label models only; skipped for this multi-label model")
        else:
            trn = _read(a.train, a.text_col, a.label_col)  # read before the long prediction: errors come first
    data = _read(a.data, a.text_col, a.label_col, training=False, tokenizer=dls.tokenizer)
    empty = [i for i, l in enumerate(data.labels) if str(l).strip() == ""]  # as training skips them
    if len(empty) == len(data):
        raise UsageError(f"{a.data}: no row has a label in column {a.label_col!r} (ulmfit predict labels unlabelled texts)")
    if empty:
        print(f"{a.data}: {len(empty)} row(s) without a label are left out of the metrics (rows {empty[:10]}"
              f"{' ...' if len(empty) > 10 else ''})")
        gone = set(empty)
        data = data.subset([i for i in range(len(data)) if i not in gone])
    texts, labels = data.texts, data.labels
    given = {c for l in labels for c in label_parts(l)} if multi else {str(l) for l in labels}
    unknown = sorted(given - set(model_classes))
    if unknown:
        raise UsageError(f"labels {unknown[:5]} were never seen in training (classes: {model_classes[:20]})")
    probs, classes, multi = _predict_probs(model, data)
    m = classification_metrics(labels, probs, classes, multi_label=multi, threshold=a.threshold)
    res = {"ulmfit": m}
    if multi:
        print(f"subset accuracy {m['subset_accuracy']:.4f}, micro-F1 {m['micro_f1']:.4f}, macro-F1 {m['macro_f1']:.4f} "
              f"on {m['n']} texts ({a.data})")
        print("per-label F1: " + ", ".join(f"{c} {f:.3f}" for c, f in m["per_label_f1"].items()))
    else:
        pred = [classes[i] for i in np.asarray(probs).argmax(1)]
        print(f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} on {m['n']} texts ({a.data})")
        print(classification_report_text(labels, pred, classes))
        if a.confusion:
            confusion_png(labels, pred, classes, a.confusion, f"{Path(a.data).name}: {Path(a.model).name}")
            print(f"confusion matrix -> {a.confusion}")
    if multi and a.confusion:
        print("--confusion: a confusion matrix is for single-label models; not written")
    if trn is not None:
        from .baseline import TfidfBaseline
        tt = trn.texts
        b = TfidfBaseline().fit(tt, trn.labels)
        bm = classification_metrics(labels, _align(b.predict_proba(texts), b.classes, classes), classes)
        res["tfidf_lr"] = bm
        print(f"baseline TF-IDF 1-2 grams + logistic regression (fitted on {len(tt):,} texts of {a.train}): "
              f"accuracy {bm['accuracy']:.4f}, macro-F1 {bm['macro_f1']:.4f}")
        print(f"ULMFiT - baseline: {100 * (m['accuracy'] - bm['accuracy']):+.2f} accuracy points")
    if a.json:
        from .artifact import write_json
        write_json(a.json, res)
        print(f"metrics -> {a.json}")


def _align(p, from_classes, to_classes):
    import numpy as np
    out = np.zeros((len(p), len(to_classes)))
    for j, c in enumerate(from_classes):
        if c in to_classes:
            out[:, to_classes.index(c)] = p[:, j]
    return out


def cmd_predict(a):
    import pandas as pd

    from .evaluation import predict_dataframe
    if a.csv:
        if not a.out:
            raise UsageError("--csv needs --out (a CSV path, or - for standard output)")
        if a.texts or a.file:
            raise UsageError("give texts as arguments / --file, or --csv, not both")
        from .corpus import csv_sep, missing_column, read_csv
        if a.out != "-" and (Path(a.out).is_dir() or Path(a.out).resolve() == Path(a.csv).resolve()):
            raise UsageError(f"--out {a.out} is " + ("a folder" if Path(a.out).is_dir() else "the input file")
                             + ": give a new file to write the predictions to")
        df = read_csv(a.csv)
        if a.text_col not in df.columns:
            raise UsageError(missing_column(a.csv, a.text_col, df.columns, "--text-col"))
        device, _ = _setup(a, f"the classifier(s) in {a.model}")
        probs, classes, multi = _predict_probs(_load_model(a.model, device)[0], df[a.text_col].tolist())
        res = predict_dataframe(df, probs, classes, a.text_col, multi, a.threshold)
        if a.out == "-":
            res.to_csv(sys.stdout, index=False)
        else:
            from .artifact import atomic_write
            atomic_write(a.out, res.to_csv(index=False, sep=csv_sep(a.out)))
            print(f"{len(res):,} rows -> {a.out}")
        return
    texts = list(a.texts)
    if a.file:  # one text per line, whatever the file's name; every line kept
        if not Path(a.file).is_file():
            raise UsageError(f"no such file: {a.file}")
        texts += Path(a.file).read_text(encoding="utf-8", errors="replace").splitlines()
    if not texts and not sys.stdin.isatty():
        texts = sys.stdin.read().splitlines()  # every line, as with --file
    if not texts:
        raise UsageError("nothing to predict: give texts as arguments, --file, --csv, or on standard input")
    device, _ = _setup(a)
    probs, classes, multi = _predict_probs(_load_model(a.model, device)[0], texts)
    res = predict_dataframe(pd.DataFrame({"text": texts}), probs, classes, "text", multi, a.threshold)
    for _, r in res.iterrows():
        if multi:
            print(f"{r['predicted_labels']}\t{r['text']}")
        else:
            print(f"{r['predicted_label']}\t{r['probability']:.3f}\t{r['text']}")


def cmd_export(a):
    """A model folder (any version) rewritten in the current hub layout, optionally in fp16."""
    import torch

    from .artifact import read_model_folder, save_model_folder
    meta, itos, state = read_model_folder(a.model)
    metrics = json.loads((Path(a.model) / "metrics.json").read_text()) if (Path(a.model) / "metrics.json").exists() else None
    if meta.get("kind") == "lm" and meta["config"].get("tie_weights") and "decoder.decoder.weight" in state:
        state["decoder.decoder.weight"] = state["encoder.embedding.weight"]  # stored once
    meta = {k: v for k, v in meta.items() if k not in ("format", "vocab_sz")}
    save_model_folder(a.out, state, meta, itos, metrics, dtype=torch.float16 if a.half else None)
    size = sum(f.stat().st_size for f in Path(a.out).iterdir()) / 2**20
    print(f"exported {a.model} -> {a.out} ({size:.1f} MiB{', fp16 weights' if a.half else ''})")


# ----------------------------------------------------------------------------------------- parser
def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _add_hardware(p):
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N "
                   "(default: auto)")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: bf16 where the CPU (AVX-512 bf16 / AMX) or GPU has it, else fp32; fp16: CUDA only "
                   "(default: auto)")
    g.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)  # earlier spelling of --precision bf16


def _add_model(p):
    g = p.add_argument_group("new model size (default: the shipped LM's 200/400/3; the paper's is 400/1152/3)")
    g.add_argument("--emb-sz", type=_positive_int, default=None, help="embedding size")
    g.add_argument("--n-hid", type=_positive_int, default=None, help="LSTM hidden size")
    g.add_argument("--n-layers", type=_positive_int, default=None, help="LSTM layers")
    g.add_argument("--arch", choices=["lstm", "qrnn"], default=None, help="recurrent layers (default: lstm)")


def _add_tokenizer(p):
    g = p.add_argument_group("tokenizer of a new LM (stages 2 and 3 and predict use the LM's own)")
    g.add_argument("--tokenizer", choices=["spacy", "sentencepiece"], default="spacy",
                   help="spacy: fastai's rules on spaCy's tokenizer; sentencepiece: subwords trained on the training "
                   "texts, as MultiFiT (default: spacy)")
    g.add_argument("--lang", default="en", help="language of spaCy's rules / the texts (default: en)")
    g.add_argument("--vocab-sz", type=_positive_int, default=None, help="SentencePiece vocabulary size "
                   "(default: from the corpus size, at most 30,000)")


def _add_lm(p):
    """Options shared by the two LM stages."""
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--text-col", default="text", help="text column of a CSV (default: text)")
    p.add_argument("--backwards", action="store_true", help="train the backward LM (reversed token order)")
    p.add_argument("--bptt", type=_positive_int, default=70, help="BPTT length (default: 70)")
    p.add_argument("--max-vocab", type=_positive_int, default=30000, help="vocabulary size cap (default: 30000)")


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import DEFAULT_CLASSIFIER, DEFAULT_LM, PRETRAIN
    ap = argparse.ArgumentParser(prog="ulmfit", description="ULMFiT (Howard & Ruder 2018) on fastai: pretrain an "
                                 "AWD-LSTM LM, fine-tune it on your texts, then train a text classifier on top.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="all three stages on the embedded BBC News data, beside TF-IDF (about 10 min)")
    p.add_argument("--out", default="runs/demo", help="folder for models, metrics and plots (default: runs/demo)")
    p.add_argument("--pretrained", default="general", help="stage-1 LM: 'general' (shipped), a folder with fwd/bwd "
                   "model folders, a hub id, or 'none' for random weights (default: general)")
    p.add_argument("--size", choices=["full", "tiny"], default="full", help="'tiny' is a one-minute smoke run")
    p.add_argument("--seed", type=int, default=42, help="seed of the split and the training (default: 42)")
    _add_hardware(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain", help="stage 1: train the LM on a general-domain corpus")
    p.add_argument("corpus", help="CSV with a text column, a folder with train.csv (+ valid.csv), or .txt files")
    _add_lm(p)
    _add_model(p)
    _add_tokenizer(p)
    _add_recipe(p, "pretrain", PRETRAIN)
    _add_hardware(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune-lm", help="stage 2: fine-tune the LM on the target task's texts")
    p.add_argument("data", help="CSV, folder-per-class tree, or 'bbc'")
    p.add_argument("--pretrained", default="general", help="stage-1 LM: 'general' (shipped with the package), a model "
                   "folder, a Hugging Face Hub id, or 'none' for random weights (default: general)")
    p.add_argument("--unlabelled", help="more text for LM fine-tuning: a .txt file (one text per line) or a CSV "
                   "with a text column")
    p.add_argument("--keep-pretrained-vocab", action=argparse.BooleanOptionalAction, default=True,
                   help="also keep the stage-1 tokens the task text lacks, with their pretrained embeddings "
                   "(default: on)")
    _add_lm(p)
    _add_model(p)
    _add_tokenizer(p)
    _add_recipe(p, "lm", DEFAULT_LM)
    _add_hardware(p)
    p.set_defaults(func=cmd_finetune_lm)

    p = sub.add_parser("train-classifier", help="stage 3: train the classifier on the fine-tuned LM")
    p.add_argument("data", help="labelled CSV, folder-per-class tree, or 'bbc'")
    p.add_argument("--lm", required=True, help="stage-2 model folder (its vocabulary and direction are used)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--valid", help="labelled validation data (default: 10%% of the training rows)")
    p.add_argument("--text-col", default="text", help="(default: text)")
    p.add_argument("--label-col", default="label", help="(default: label)")
    p.add_argument("--backwards", action="store_true", help="check that --lm is a backward LM (the direction is "
                   "always the LM's)")
    p.add_argument("--multi-label", action="store_true", help="labels joined by ';', sigmoid outputs")
    p.add_argument("--max-tokens", type=_positive_int, help="keep the first N tokens of each document (saved with "
                   "the model and used again by evaluate and predict; default: all)")
    p.add_argument("--class-weights", help="'balanced' or comma-separated weights in sorted class order")
    p.add_argument("--seed", type=int, default=42, help="(default: 42)")
    _add_recipe(p, "classifier", DEFAULT_CLASSIFIER)
    _add_hardware(p)
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("evaluate", help="accuracy, macro-F1 and per-class report on labelled data")
    p.add_argument("data", help="labelled CSV, folder-per-class tree, or 'bbc'")
    p.add_argument("--model", required=True, help="classifier folder, or run folder with clf_fwd and clf_bwd")
    p.add_argument("--text-col", default="text", help="(default: text)")
    p.add_argument("--label-col", default="label", help="(default: label)")
    p.add_argument("--baseline", action="store_true", help="also TF-IDF + logistic regression fitted on --train")
    p.add_argument("--train", help="the labelled training data, for --baseline")
    p.add_argument("--json", help="write the metrics as JSON to this path")
    p.add_argument("--confusion", help="write the confusion matrix as a PNG to this path")
    p.add_argument("--threshold", type=float, default=0.5, help="multi-label decision threshold (default: 0.5)")
    _add_hardware(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify texts (arguments, --file, standard input, or --csv)")
    p.add_argument("texts", nargs="*")
    p.add_argument("--model", required=True, help="classifier folder, or run folder (forward+backward ensemble)")
    p.add_argument("--file", help="one text per line")
    p.add_argument("--csv", help="CSV in ('-' for standard input): every column is kept in the output")
    p.add_argument("--out", help="CSV out for --csv ('-' for standard output)")
    p.add_argument("--text-col", default="text", help="text column of --csv (default: text)")
    p.add_argument("--threshold", type=float, default=0.5, help="multi-label decision threshold (default: 0.5)")
    _add_hardware(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="rewrite a model folder in the hub layout (safetensors), e.g. in fp16 to ship")
    p.add_argument("model", help="a model folder written by any stage (also the earlier weights.pt folders)")
    p.add_argument("out", help="folder to write")
    p.add_argument("--half", action="store_true", help="store the weights in fp16 (half the size; loaded as fp32)")
    p.set_defaults(func=cmd_export)
    from .explain import add_parser as add_explain_parser
    add_explain_parser(sub)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UsageError, FileNotFoundError, FileExistsError, NotADirectoryError) as e:
        print(f"ulmfit {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `ulmfit predict ... --out - | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except ValueError as e:  # the library's checks of data and arguments
        print(f"ulmfit {args.command}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
