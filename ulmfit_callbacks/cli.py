"""``ulmfit``: the three ULMFiT stages, evaluation, prediction and a demo from the command line."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


class UsageError(Exception):
    """A bad argument or path: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------------- inputs
def _read_labelled(path: str, text_col: str, label_col: str | None):
    """Texts (and labels) from a CSV, a folder-per-class tree, or ``bbc`` (the embedded BBC News)."""
    from .data import load_bbc_news, read_folder, read_texts
    if path == "bbc":
        df = load_bbc_news()
        return df.text.tolist(), (df.label.tolist() if label_col else None)
    p = Path(path)
    if p.is_dir():
        texts, labels, _, bad = read_folder(p)
        if bad:
            print(f"{len(bad)} file(s) not valid UTF-8, decoded with U+FFFD: " + ", ".join(map(str, bad[:5])))
        return texts, (labels if label_col else None)
    if not p.exists():
        raise UsageError(f"no such file or folder: {path}")
    return read_texts(p, text_col, label_col)


def _read_corpus(path: str, text_col: str):
    """A general corpus: a CSV, a folder with train.csv (+ valid.csv), or a folder of .txt files."""
    from .data import read_texts
    p = Path(path)
    if p.is_dir() and (p / "train.csv").exists():
        train, _ = read_texts(p / "train.csv", text_col)
        valid = read_texts(p / "valid.csv", text_col)[0] if (p / "valid.csv").exists() else None
        return train, valid
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise UsageError(f"{path} holds no train.csv and no .txt files")
        return [f.read_bytes().decode("utf-8", errors="replace") for f in files], None
    if not p.exists():
        raise UsageError(f"no such file or folder: {path}")
    return read_texts(p, text_col)[0], None


def _model_config(a):
    from .models.awd_lstm import AWDLSTMConfig
    return AWDLSTMConfig(emb_sz=a.emb_sz, n_hid=a.n_hid, n_layers=a.n_layers, arch=a.arch)


def _recipe(a, classifier=False):
    from .pipeline import Recipe
    if a.lr <= 0:
        raise UsageError(f"--lr must be > 0, got {a.lr}")
    if a.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {a.epochs}")
    if a.drop_mult < 0:
        raise UsageError(f"--drop-mult must be >= 0, got {a.drop_mult}")
    if a.decay <= 0:
        raise UsageError(f"--decay must be > 0, got {a.decay}")
    return Recipe(epochs=a.epochs, lr=a.lr, stlr=not a.no_stlr, discriminative=not a.no_discriminative, decay=a.decay,
                  gradual_unfreezing=classifier and not getattr(a, "no_gradual_unfreezing", True),
                  asgd=a.asgd, cut_frac=a.cut_frac, ratio=a.ratio, drop_mult=a.drop_mult)


def _extra_cbs(a):
    from .precision import BF16Autocast
    return [BF16Autocast()] if a.bf16 else []


# --------------------------------------------------------------------------------------- commands
def cmd_pretrain(a):
    from .pipeline import Recipe, pretrain_lm
    r = _recipe(a)  # arguments first, data second
    train, valid = _read_corpus(a.corpus, a.text_col)
    recipe = Recipe(epochs=r.epochs, lr=r.lr, stlr=r.stlr, discriminative=False, asgd=r.asgd, drop_mult=r.drop_mult)
    _, m = pretrain_lm(train, valid, a.out, _model_config(a), recipe, backwards=a.backwards, bs=a.bs, bptt=a.bptt,
                       max_vocab=a.max_vocab, cbs=_extra_cbs(a))
    print(f"stage 1 done: validation perplexity {m['perplexity']:.1f} -> {a.out}")


def cmd_finetune_lm(a):
    from .pipeline import finetune_lm
    recipe = _recipe(a)
    texts, _ = _read_labelled(a.data, a.text_col, None)
    _, m = finetune_lm(texts, None, a.out, recipe, pretrained=a.pretrained,
                       config=None if a.pretrained else _model_config(a), backwards=a.backwards, bs=a.bs, bptt=a.bptt,
                       max_vocab=a.max_vocab, cbs=_extra_cbs(a), keep_pretrained_vocab=a.keep_pretrained_vocab)
    print(f"stage 2 done: validation perplexity {m['perplexity']:.1f} -> {a.out}")


def cmd_train_classifier(a):
    from .pipeline import load_artifact, train_classifier
    recipe = _recipe(a, classifier=True)
    load_artifact(a.lm)  # a missing or foreign LM folder fails before the data are read
    texts, labels = _read_labelled(a.data, a.text_col, a.label_col)
    vt, vl = _read_labelled(a.valid, a.text_col, a.label_col) if a.valid else (None, None)
    if vt is None:
        from .data import _split_valid
        tr, va = _split_valid(len(texts), 0.1, a.seed)
        vt, vl = [texts[i] for i in va], [labels[i] for i in va]
        texts, labels = [texts[i] for i in tr], [labels[i] for i in tr]
    _, m = train_classifier(texts, labels, vt, vl, a.out, recipe, lm=a.lm, backwards=a.backwards,
                            bs=a.bs, max_tokens=a.max_tokens, multi_label=a.multi_label, seed=a.seed, cbs=_extra_cbs(a))
    print(f"stage 3 done: validation accuracy {m['accuracy']:.4f} -> {a.out}")


def _classifiers(model_dir: str):
    """One classifier folder, or a run folder with clf_fwd and/or clf_bwd (then the ensemble)."""
    from .ensemble import ForwardBackwardEnsemble
    from .pipeline import load_classifier
    p = Path(model_dir)
    if (p / "config.json").exists():
        return load_classifier(p), None
    fwd, bwd = p / "clf_fwd", p / "clf_bwd"
    if not fwd.exists() and not bwd.exists():
        raise UsageError(f"{model_dir} is neither a classifier folder nor a run folder with clf_fwd / clf_bwd")
    if fwd.exists() and bwd.exists():
        ens = ForwardBackwardEnsemble(load_classifier(fwd), load_classifier(bwd))
        return None, ens
    return load_classifier(fwd if fwd.exists() else bwd), None


def _predict_probs(model_dir, texts):
    from .ensemble import predict_texts
    learn, ens = _classifiers(model_dir)
    if ens is not None:
        return ens.get_preds(texts)[0], ens.classes
    return predict_texts(learn, texts), list(learn.dls.classes)


def cmd_evaluate(a):
    texts, labels = _read_labelled(a.data, a.text_col, a.label_col)
    probs, classes = _predict_probs(a.model, texts)
    pred = [classes[i] for i in probs.argmax(1).tolist()]
    unknown = sorted({str(l) for l in labels} - set(map(str, classes)))
    if unknown:
        raise UsageError(f"labels {unknown[:5]} were never seen in training (classes: {classes})")
    acc = sum(str(p) == str(l) for p, l in zip(pred, labels)) / len(labels)
    print(f"accuracy {acc:.4f} on {len(labels)} texts ({a.data})")
    print(_report([str(l) for l in labels], pred, [str(c) for c in classes]))


def cmd_predict(a):
    texts = list(a.texts)
    if a.file:
        texts += [l for l in Path(a.file).read_text(encoding="utf-8").splitlines() if l.strip()]
    if not texts and not sys.stdin.isatty():
        texts = [l for l in sys.stdin.read().splitlines() if l.strip()]
    if not texts:
        raise UsageError("nothing to predict: give texts as arguments, --file, or on standard input")
    probs, classes = _predict_probs(a.model, texts)
    for t, p in zip(texts, probs):
        i = int(p.argmax())
        print(f"{classes[i]}\t{float(p[i]):.3f}\t{t[:80]}")


def _report(y_true, y_pred, classes) -> str:
    try:
        from sklearn.metrics import classification_report
        return classification_report(y_true, y_pred, labels=classes, digits=3, zero_division=0)
    except ImportError:
        return ""


def _confusion_png(y_true, y_pred, classes, path: Path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    idx = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(y_true, y_pred):
        cm[idx[t], idx[p]] += 1
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DEMO_SIZES = {  # CPU-sized: the whole demo takes about 10 minutes on 2 cores
    "full": dict(emb_sz=64, n_hid=256, n_layers=2, max_vocab=8000, lm_epochs=2, clf_epochs=8, unfreeze=[1, 2],
                 max_tokens=400, pretrain_tokens=600_000),
    "tiny": dict(emb_sz=16, n_hid=32, n_layers=2, max_vocab=2000, lm_epochs=1, clf_epochs=2, unfreeze=None,
                 max_tokens=60, pretrain_tokens=20_000, n_docs=300),
}


def cmd_demo(a):
    """All three stages on the embedded BBC News data; forward, backward and the ensemble."""
    import numpy as np
    import torch

    from .data import load_bbc_news, tokenize
    from .ensemble import ForwardBackwardEnsemble, predict_tokens
    from .models.awd_lstm import AWDLSTMConfig
    from .pipeline import Recipe, finetune_lm, load_classifier, pretrain_lm, train_classifier, write_json

    size = DEMO_SIZES[a.size]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(a.seed)
    print("== ULMFiT demo: BBC News (2,225 articles, 5 classes), CPU-sized AWD-LSTM ==")
    df = load_bbc_news()
    if "n_docs" in size:
        df = df.sample(size["n_docs"], random_state=a.seed).reset_index(drop=True)
    perm = np.random.default_rng(a.seed).permutation(len(df))
    n_test, n_valid = int(0.2 * len(df)), int(0.1 * len(df))
    test, valid, train = perm[:n_test], perm[n_test: n_test + n_valid], perm[n_test + n_valid:]
    print(f"split: {len(train)} train / {len(valid)} valid / {len(test)} test; tokenising...")
    toks = tokenize(df.text.tolist(), n_workers=min(2, os.cpu_count() or 1))
    pick = lambda idx: [toks[i] for i in idx]  # noqa: E731
    labels = df.label.tolist()
    config = AWDLSTMConfig(emb_sz=size["emb_sz"], n_hid=size["n_hid"], n_layers=size["n_layers"])
    if not a.general_corpus and not a.pretrained:
        print("stage 1 skipped: no --general-corpus or --pretrained given, so the LM starts from random weights")
    for direction, backwards in (("fwd", False), ("bwd", True)):
        pretrained = _stage1_folder(a.pretrained, backwards) if a.pretrained else None
        if a.general_corpus and not a.pretrained:
            gtrain, gvalid = _read_corpus(a.general_corpus, "text")
            gtoks = _take_tokens(gtrain, size["pretrain_tokens"])
            gvtoks = tokenize((gvalid or gtrain[-200:])[:300])
            print(f"[{direction}] stage 1: pretraining on {sum(map(len, gtoks)):,} tokens of {a.general_corpus}")
            pretrained = out / f"general_{direction}"
            _, g = pretrain_lm(None, None, pretrained, config, Recipe(epochs=1, lr=a.lr_lm), backwards=backwards,
                               max_vocab=size["max_vocab"] * 2, tokens=(gtoks, gvtoks), seed=a.seed)
            print(f"[{direction}] stage 1 validation perplexity {g['perplexity']:.1f}")
        print(f"[{direction}] stage 2: fine-tuning the LM on the BBC training texts")
        _, lm_m = finetune_lm(None, None, out / f"lm_{direction}", Recipe(epochs=size["lm_epochs"], lr=a.lr_lm),
                              pretrained=pretrained, config=config, backwards=backwards, max_vocab=size["max_vocab"],
                              tokens=(pick(train), pick(valid)), seed=a.seed)
        print(f"[{direction}] LM validation perplexity {lm_m['perplexity']:.1f}")
        print(f"[{direction}] stage 3: classifier with gradual unfreezing, discriminative lrs and STLR")
        train_classifier(None, [labels[i] for i in train], None, [labels[i] for i in valid],
                         out / f"clf_{direction}",
                         Recipe(epochs=size["clf_epochs"], lr=a.lr_clf, unfreeze_schedule=size["unfreeze"]),
                         lm=out / f"lm_{direction}", backwards=backwards, max_tokens=size["max_tokens"],
                         tokens=(pick(train), pick(valid)), seed=a.seed)
    fwd, bwd = load_classifier(out / "clf_fwd"), load_classifier(out / "clf_bwd")
    ens = ForwardBackwardEnsemble(fwd, bwd)
    y = [labels[i] for i in test]
    probs = {name: predict_tokens(learn, pick(test), max_tokens=size["max_tokens"])
             for name, learn in (("forward", fwd), ("backward", bwd))}
    probs["ensemble"] = (probs["forward"] + probs["backward"]) / 2  # the ensemble's rule: mean probability
    classes = ens.classes
    print("\n== test accuracy (%d held-out articles) ==" % len(test))
    summary = {}
    for name, p in probs.items():
        pred = [classes[i] for i in p.argmax(1).tolist()]
        acc = float(np.mean([a_ == b_ for a_, b_ in zip(pred, y)]))
        summary[name] = acc
        print(f"  {name:9s} {acc:.4f}")
    pred = [classes[i] for i in probs["ensemble"].argmax(1).tolist()]
    print("\nper-class report (ensemble):\n" + _report(y, pred, classes))
    _confusion_png(y, pred, classes, out / "confusion_matrix.png", "BBC News test, forward+backward ensemble")
    minutes = (time.time() - t0) / 60
    write_json(out / "results.json", dict(test_accuracy=summary, n_test=len(test), minutes=round(minutes, 2),
                                          stage1=bool(a.general_corpus or a.pretrained), size=a.size))
    print(f"saved: {out}/results.json, confusion_matrix.png, clf_fwd/lr_per_group.png, model folders; "
          f"took {minutes:.1f} min")
    print(f"try:   ulmfit predict --model {out} \"Shares rose after the bank cut interest rates\"")


def _stage1_folder(pretrained: str, backwards: bool) -> Path:
    """The stage-1 LM of one direction: ``DIR/general_fwd|bwd`` (as the demo writes them) or ``DIR`` itself."""
    from .pipeline import load_artifact
    p = Path(pretrained) / f"general_{'bwd' if backwards else 'fwd'}"
    p = p if p.exists() else Path(pretrained)
    meta = load_artifact(p)[0]
    if meta["backwards"] != backwards:
        raise UsageError(f"{p} is a {'backward' if meta['backwards'] else 'forward'} LM; the demo needs both "
                         "directions: pass a folder with general_fwd and general_bwd (as the demo writes)")
    return p


def _take_tokens(texts, n_tokens):
    from .data import tokenize
    out, total = [], 0
    for i in range(0, len(texts), 500):
        for t in tokenize(texts[i: i + 500], n_workers=min(2, os.cpu_count() or 1)):
            out.append(t)
            total += len(t)
            if total >= n_tokens:
                return out
    return out


# ----------------------------------------------------------------------------------------- parser
def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _add_training(p, lr, epochs, classifier=False):
    p.add_argument("--epochs", type=_positive_int, default=epochs, help=f"training epochs (default {epochs})")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate of STLR (default {lr})")
    p.add_argument("--cut-frac", type=float, default=0.1, help="STLR: fraction of iterations spent rising (0.1)")
    p.add_argument("--ratio", type=float, default=32, help="STLR: lr_max / lr_min (32)")
    p.add_argument("--no-stlr", action="store_true", help="one-cycle schedule instead of slanted triangular lrs")
    p.add_argument("--no-discriminative", action="store_true", help="same lr for every layer")
    p.add_argument("--decay", type=float, default=2.6,
                   help="discriminative lrs: lr of layer l-1 = lr of layer l / decay (paper: 2.6)")
    if classifier:
        p.add_argument("--no-gradual-unfreezing", action="store_true", help="train all layers from the start")
    p.add_argument("--asgd", action="store_true", help="NT-ASGD weight averaging")
    p.add_argument("--bs", type=_positive_int, default=32, help="batch size (32)")
    p.add_argument("--drop-mult", type=float, default=1.0, help="multiplies every dropout (fastai's drop_mult)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with AVX-512/AMX, recent GPUs)")


def _add_model(p):
    p.add_argument("--emb-sz", type=_positive_int, default=400, help="embedding size (paper: 400)")
    p.add_argument("--n-hid", type=_positive_int, default=1152, help="LSTM hidden size (paper: 1152)")
    p.add_argument("--n-layers", type=_positive_int, default=3, help="LSTM layers (paper: 3)")
    p.add_argument("--arch", choices=["lstm", "qrnn"], default="lstm", help="recurrent layers: AWD-LSTM or QRNN")


def _add_lm(p):
    """Options shared by the two LM stages."""
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--text-col", default="text")
    p.add_argument("--backwards", action="store_true", help="train the backward LM (reversed token order)")
    p.add_argument("--bptt", type=_positive_int, default=70)
    p.add_argument("--max-vocab", type=_positive_int, default=30000)
    _add_model(p)
    _add_training(p, lr=1e-2, epochs=1)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ulmfit", description="ULMFiT (Howard & Ruder 2018) on fastai: pretrain an "
                                 "AWD-LSTM LM, fine-tune it on your texts, then train a text classifier on top.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="all three stages on the embedded BBC News data (about 10 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="folder for models, metrics and plots")
    p.add_argument("--general-corpus", help="stage 1 on this corpus (CSV, folder with train.csv, or .txt files), "
                   "e.g. ../shared/data/general")
    p.add_argument("--pretrained", help="a stage-1 model folder (from `ulmfit pretrain`) instead of stage 1")
    p.add_argument("--size", choices=sorted(DEMO_SIZES), default="full", help="'tiny' is a one-minute smoke run")
    p.add_argument("--lr-lm", type=float, default=1e-2, help="peak lr of LM fine-tuning")
    p.add_argument("--lr-clf", type=float, default=2e-2, help="peak lr of the classifier")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain", help="stage 1: train the LM on a general-domain corpus")
    p.add_argument("corpus", help="CSV with a text column, a folder with train.csv (+ valid.csv), or .txt files")
    _add_lm(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune-lm", help="stage 2: fine-tune the LM on the target task's texts")
    p.add_argument("data", help="CSV, folder-per-class tree, or 'bbc'")
    p.add_argument("--pretrained", help="stage-1 model folder (omit to start from random weights)")
    p.add_argument("--keep-pretrained-vocab", action="store_true",
                   help="also keep the stage-1 tokens the task text lacks (they keep their pretrained embeddings)")
    _add_lm(p)
    p.set_defaults(func=cmd_finetune_lm)

    p = sub.add_parser("train-classifier", help="stage 3: train the classifier on the fine-tuned LM")
    p.add_argument("data", help="labelled CSV, folder-per-class tree, or 'bbc'")
    p.add_argument("--lm", required=True, help="stage-2 model folder (its vocabulary and direction are used)")
    p.add_argument("--out", required=True)
    p.add_argument("--valid", help="labelled validation data (default: 10%% of the training rows)")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--backwards", action="store_true")
    p.add_argument("--multi-label", action="store_true", help="labels joined by ';', sigmoid outputs")
    p.add_argument("--max-tokens", type=_positive_int, help="keep the first N tokens of each document")
    p.add_argument("--seed", type=int, default=42)
    _add_training(p, lr=1e-2, epochs=4, classifier=True)
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("evaluate", help="accuracy and per-class report on labelled data")
    p.add_argument("data", help="labelled CSV, folder-per-class tree, or 'bbc'")
    p.add_argument("--model", required=True, help="classifier folder, or run folder with clf_fwd and clf_bwd")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify texts (arguments, --file, or standard input)")
    p.add_argument("texts", nargs="*")
    p.add_argument("--model", required=True, help="classifier folder, or run folder (forward+backward ensemble)")
    p.add_argument("--file", help="one text per line")
    p.set_defaults(func=cmd_predict)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UsageError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"ulmfit {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
