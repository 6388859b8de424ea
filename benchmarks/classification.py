"""TREC-6 and MR at CPU scale: ULMFiT (ours) vs the stock fastai recipe vs from scratch vs TF-IDF.

Stage 1 runs once per direction on ``../shared/data/general`` and is cached outside the
repository (``~/.cache/ulmfit_callbacks/bench``, or ``$ULMFIT_BENCH_CACHE``); every method
that uses pretraining starts from those weights.

    python benchmarks/classification.py stage1 --direction fwd --bf16 --drop-mult 0.2   # and --direction bwd
    python benchmarks/classification.py tune --task trec6 --seeds 0 --directions fwd --set clf_lr=0.02
    python benchmarks/classification.py compare --task trec6 --seeds 0 1 2
    python benchmarks/classification.py compare --task mr --seeds 0 1 2
    python benchmarks/classification.py ablate --task trec6 --seeds 0 --directions fwd
    python benchmarks/classification.py sample --task trec6 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from dataclasses import dataclass

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import CACHE, DATA, REPO, record, tokens  # noqa: E402

from ulmfit_callbacks import AWDLSTMConfig, BF16Autocast, Vocab  # noqa: E402
from ulmfit_callbacks.corpus import Corpus  # noqa: E402
from ulmfit_callbacks.ensemble import predict_proba  # noqa: E402
from ulmfit_callbacks.pipeline import Recipe, finetune_lm, load_artifact, pretrain_lm, train_classifier  # noqa: E402

CFG = AWDLSTMConfig(emb_sz=200, n_hid=400, n_layers=3)  # the CPU config of the stock numbers
MONITOR = 100  # evaluation documents shown during training (nothing is selected on them); errors use all


def stage1(args):
    train = pd.read_csv(DATA / "general" / "train.csv").text.tolist()
    valid = pd.read_csv(DATA / "general" / "valid.csv").text.tolist()
    toks, vtoks = tokens(train, "general_train"), tokens(valid, "general_valid")
    n, cut = 0, len(toks)
    for i, t in enumerate(toks):
        n += len(t)
        if n >= args.max_tokens:
            cut = i + 1
            break
    toks = toks[:cut]
    out = CACHE / f"stage1_{args.direction}"
    t = time.time()
    recipe = Recipe(epochs=args.epochs, lr=args.lr, drop_mult=args.drop_mult)
    learn, m = pretrain_lm(Corpus(toks), Corpus(vtoks), out, CFG, recipe, backwards=args.direction == "bwd",
                           bs=args.bs, bptt=70, max_vocab=args.max_vocab, seed=0,
                           cbs=[BF16Autocast()] if args.bf16 else ())
    m.update(train_tokens=sum(map(len, toks)), minutes=round((time.time() - t) / 60, 1), bf16=args.bf16,
             drop_mult=args.drop_mult, lr=args.lr, bs=args.bs)
    print(f"stage 1 {args.direction}: valid perplexity {m['perplexity']:.1f} on {m['train_tokens']:,} tokens, "
          f"{m['minutes']} min")
    record(f"stage1_{args.direction}", m)


def _task(name):
    tr, te = pd.read_csv(DATA / name / "train.csv"), pd.read_csv(DATA / name / "test.csv")
    return tr.text.tolist(), tr.label.tolist(), te.text.tolist(), te.label.tolist()


def tfidf(tr_x, tr_y, te_x, te_y, seed):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    v = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    clf = LogisticRegression(C=10, max_iter=2000, random_state=seed).fit(v.fit_transform(tr_x), tr_y)
    return float((clf.predict(v.transform(te_x)) != np.array(te_y)).mean())


def _error(learn, toks, labels):
    p = predict_proba(learn, Corpus(toks))
    y = np.array([learn.dls.classes.index(l) for l in labels])
    return p, float((p.argmax(1).numpy() != y).mean())


@dataclass(frozen=True)
class Variant:
    """One configuration of our ULMFiT recipe (the full recipe by default; ablations switch parts off)."""
    lm_ft: bool = True            # stage 2: fine-tune the LM on the task's training text
    lm_epochs: int = 3
    lm_lr: float = 1e-2
    lm_drop_mult: float = 1.0
    keep_vocab: bool = True       # keep stage-1 tokens absent from the task text
    discriminative: bool = True
    stlr: bool = True             # False: fastai's fit_one_cycle at the same lr
    gradual_unfreezing: bool = True
    averaging: bool = True        # classifier weights averaged over its last epochs (ASGD)
    clf_epochs: int = 6
    clf_lr: float = 1e-2          # the paper's classifier lr
    clf_decay: float = 2.6        # classifier's discriminative lr ratio between groups (the paper's 2.6)
    clf_drop_mult: float = 0.5    # fastai's text_classifier_learner default
    clf_bf16: bool = False        # classifier trained under BF16Autocast (issue 9's quality guard)

    def lm_key(self, task, d):
        return (f"lm_{task}_{d}_e{self.lm_epochs}_lr{self.lm_lr:g}_dm{self.lm_drop_mult:g}_v{int(self.keep_vocab)}"
                f"_d{int(self.discriminative)}_s{int(self.stlr)}")


ABLATIONS = {
    "full": Variant(),
    "without LM fine-tuning": Variant(lm_ft=False),
    "without discriminative lrs": Variant(discriminative=False),
    "one-cycle instead of STLR": Variant(stlr=False),
    "without gradual unfreezing": Variant(gradual_unfreezing=False),
    "without averaging": Variant(averaging=False),
    "task vocabulary only": Variant(keep_vocab=False),
}


def _lm(task, d, v: Variant, tr_toks, seed=0):
    """Stage 2 once per task, direction and LM settings (cached); the stage-1 folder without it."""
    if not v.lm_ft:
        return CACHE / f"stage1_{d}"
    lm_dir = CACHE / v.lm_key(task, d)
    if not (lm_dir / "weights.pt").exists():
        n = len(tr_toks) // 10  # the LM's validation text: the last 10% of the training texts, no labels used
        finetune_lm(Corpus(tr_toks[:-n]), Corpus(tr_toks[-n:]), lm_dir, Recipe(epochs=v.lm_epochs, lr=v.lm_lr, drop_mult=v.lm_drop_mult,
                                                discriminative=v.discriminative, stlr=v.stlr),
                    pretrained=CACHE / f"stage1_{d}", backwards=d == "bwd", bptt=70, max_vocab=30000,
                    seed=seed, bs=32, keep_pretrained_vocab=v.keep_vocab,
                    cbs=[BF16Autocast()])
    return lm_dir


def ours(task, tr_toks, tr_y, te_toks, te_y, seed, v: Variant, directions=("fwd", "bwd"), lm_toks=None, tag="",
         classes=None):
    """Our ULMFiT: per direction, LM fine-tuning then the classifier; the ensemble when both.
    ``lm_toks``: the texts for LM fine-tuning (default: the classifier's training texts)."""
    res, probs = {}, {}
    for d in directions:
        lm_dir = _lm(task, d, v, lm_toks if lm_toks is not None else tr_toks)
        t = time.time()
        e = v.clf_epochs
        recipe = Recipe(epochs=e, lr=v.clf_lr, stlr=v.stlr, discriminative=v.discriminative, decay=v.clf_decay,
                        gradual_unfreezing=v.gradual_unfreezing, unfreeze_schedule=[1, 2, 3] if e > 4 else None,
                        asgd=v.averaging, asgd_start_epoch=max(e - 2, 0), drop_mult=v.clf_drop_mult)
        learn, _ = train_classifier(Corpus(tr_toks, tr_y), Corpus(te_toks[:MONITOR], te_y[:MONITOR]),
                                    CACHE / f"clf_{task}_{d}{tag}_{seed}", recipe, lm=lm_dir, backwards=d == "bwd", seed=seed,
                                    cbs=[BF16Autocast()] if v.clf_bf16 else (), classes=classes)
        probs[d], err = _error(learn, te_toks, te_y)
        res[f"ours {d}"] = dict(error=err, seconds=round(time.time() - t, 1))
    if len(probs) == 2:
        y = np.array([learn.dls.classes.index(l) for l in te_y])
        res["ours fwd+bwd ensemble"] = dict(error=float((((probs["fwd"] + probs["bwd"]) / 2).argmax(1).numpy() != y).mean()))
    return res


def scratch(task, tr_toks, tr_y, te_toks, te_y, seed, v: Variant, tag="", classes=None):
    """The same classifier, no stage 1 or 2: all layers trained from the start with STLR, the same
    epochs, lr and dropout (vocabulary from the task's training text)."""
    vocab = Vocab.build(tr_toks, max_vocab=30000, min_freq=2)
    t = time.time()
    recipe = Recipe(epochs=v.clf_epochs, lr=v.clf_lr, gradual_unfreezing=False, discriminative=False,
                    drop_mult=v.clf_drop_mult)
    learn, _ = train_classifier(Corpus(tr_toks, tr_y), Corpus(te_toks[:MONITOR], te_y[:MONITOR]),
                                CACHE / f"scratch_{task}{tag}_{seed}", recipe, config=CFG, vocab=vocab, seed=seed,
                                classes=classes)
    return dict(error=_error(learn, te_toks, te_y)[1], seconds=round(time.time() - t, 1))


def stock_fastai(task, tr_x, tr_y, te_x, te_y, seed, lm_epochs):
    """fastai's ULMFiT tutorial recipe (fit_one_cycle, freeze_to(-2), (-3), unfreeze, slice(lr/2.6**4, lr)),
    fastai's own data, AWD_LSTM and learners, starting from the same stage-1 weights."""
    from fastai.text.all import (
        AWD_LSTM,
        TextDataLoaders,
        accuracy,
        awd_lstm_clas_config,
        awd_lstm_lm_config,
        language_model_learner,
        text_classifier_learner,
    )

    from ulmfit_callbacks import AWDLSTMLanguageModel, to_fastai_state_dict
    from ulmfit_callbacks.pretrained import load_pretrained
    torch.manual_seed(seed)
    t = time.time()
    df = pd.DataFrame({"text": tr_x + te_x, "label": tr_y + te_y, "is_valid": [False] * len(tr_x) + [True] * len(te_x)})
    sizes = dict(emb_sz=CFG.emb_sz, n_hid=CFG.n_hid, n_layers=CFG.n_layers)
    dls_lm = TextDataLoaders.from_df(df[~df.is_valid], text_col="text", is_lm=True, valid_pct=0.1, seed=seed, bs=32)
    lm = language_model_learner(dls_lm, AWD_LSTM, config=dict(awd_lstm_lm_config, **sizes), pretrained=False,
                                metrics=accuracy)
    meta, vocab, state = load_artifact(CACHE / "stage1_fwd")
    ours_lm = AWDLSTMLanguageModel(len(dls_lm.vocab), CFG)
    load_pretrained(ours_lm, state, vocab.itos, list(dls_lm.vocab))  # fastai pads its vocab with repeated 'xxfake'
    lm.model.load_state_dict(to_fastai_state_dict(ours_lm.state_dict()))
    lm.freeze()  # as language_model_learner does after loading pretrained weights
    with lm.no_bar(), lm.no_logging():
        lm.fit_one_cycle(1, 2e-2)
        lm.unfreeze()
        lm.fit_one_cycle(max(lm_epochs - 1, 1), 2e-3)
    lm.save_encoder("bench_enc")
    dls = TextDataLoaders.from_df(df, text_col="text", label_col="label", valid_col="is_valid", text_vocab=dls_lm.vocab,
                                  bs=32, seed=seed)
    clf = text_classifier_learner(dls, AWD_LSTM, config=dict(awd_lstm_clas_config, **sizes), pretrained=False,
                                  drop_mult=0.5, metrics=accuracy)
    clf.path = lm.path
    clf.load_encoder("bench_enc")
    with clf.no_bar(), clf.no_logging():
        clf.fit_one_cycle(1, 2e-2)
        clf.freeze_to(-2)
        clf.fit_one_cycle(1, slice(1e-2 / (2.6 ** 4), 1e-2))
        clf.freeze_to(-3)
        clf.fit_one_cycle(1, slice(5e-3 / (2.6 ** 4), 5e-3))
        clf.unfreeze()
        clf.fit_one_cycle(2, slice(1e-3 / (2.6 ** 4), 1e-3))
    return dict(error=1 - float(clf.validate()[1]), seconds=round(time.time() - t, 1))


def _variant(args) -> Variant:
    """The full recipe with ``--set key=value`` overrides."""
    fields = {f.name: f.type for f in dataclasses.fields(Variant)}
    kw = {}
    for kv in args.set or []:
        k, val = kv.split("=", 1)
        if k not in fields:
            raise SystemExit(f"--set: unknown field {k!r}; fields: {sorted(fields)}")
        kw[k] = val.lower() in ("1", "true", "yes") if fields[k] == "bool" else type(getattr(Variant(), k))(val)
    return Variant(**kw)


def _summary(rows):
    table = {k: dict(mean=float(np.mean([v["error"] for v in vs])), std=float(np.std([v["error"] for v in vs])),
                     n=len(vs), seconds=[v.get("seconds") for v in vs]) for k, vs in rows.items()}
    for k, v in table.items():
        print(f"{k:40s} {100 * v['mean']:5.1f} ± {100 * v['std']:.1f} % (n={v['n']})")
    return table


def _add(rows, r, seed):
    for k, v in r.items():
        rows.setdefault(k, []).append(v)
        print(f"seed {seed} {k:40s} error {v['error']:.4f}", flush=True)


def compare(args):
    tr_x, tr_y, te_x, te_y = _task(args.task)
    tr_toks, te_toks = tokens(tr_x, f"{args.task}_train"), tokens(te_x, f"{args.task}_test")
    v = _variant(args)
    rows = {}
    for seed in args.seeds:
        r = {}
        if "tfidf" in args.methods:
            r["TF-IDF 1-2 grams + LR (C=10)"] = dict(error=tfidf(tr_x, tr_y, te_x, te_y, seed))
        if "ours" in args.methods:
            r.update(ours(args.task, tr_toks, tr_y, te_toks, te_y, seed, v, directions=args.directions))
        if "scratch" in args.methods:
            r["same classifier from scratch"] = scratch(args.task, tr_toks, tr_y, te_toks, te_y, seed, v)
        if "stock" in args.methods:
            r["stock fastai recipe, same stage 1"] = stock_fastai(args.task, tr_x, tr_y, te_x, te_y, seed, v.lm_epochs)
        _add(rows, r, seed)
    record(f"compare_{args.task}{args.tag}", dict(task=args.task, seeds=args.seeds, variant=dataclasses.asdict(v),
                                                 table=_summary(rows), runs=rows))


def tune(args):
    """Our recipe on a 90/10 split of the training set (the test split is not read)."""
    tr_x, tr_y, _, _ = _task(args.task)
    toks = tokens(tr_x, f"{args.task}_train")
    idx = np.random.default_rng(123).permutation(len(toks))
    n = len(toks) // 10
    ho, tr = idx[:n], idx[n:]
    v = _variant(args)
    rows = {}
    for seed in args.seeds:
        r = ours(args.task + "_tune", [toks[i] for i in tr], [tr_y[i] for i in tr], [toks[i] for i in ho],
                 [tr_y[i] for i in ho], seed, v, directions=args.directions, tag="_tune" + args.tag)
        _add(rows, r, seed)
    record(f"tune_{args.task}{args.tag}", dict(task=args.task, seeds=args.seeds, variant=dataclasses.asdict(v),
                                              table=_summary(rows), runs=rows))


def ablate(args):
    tr_x, tr_y, te_x, te_y = _task(args.task)
    tr_toks, te_toks = tokens(tr_x, f"{args.task}_train"), tokens(te_x, f"{args.task}_test")
    rows = {}
    for seed in args.seeds:
        for name in args.variants:
            r = ours(args.task, tr_toks, tr_y, te_toks, te_y, seed, ABLATIONS[name], directions=args.directions,
                     tag="_" + name.replace(" ", "_"))
            _add(rows, {f"{name}: {k}": val for k, val in r.items()}, seed)
    record(f"ablate_{args.task}{args.tag}", dict(task=args.task, seeds=args.seeds, table=_summary(rows), runs=rows,
                                                variants={k: dataclasses.asdict(ABLATIONS[k]) for k in args.variants}))


def sample(args):
    """The paper's Figure 3: n labelled examples; ours fine-tunes the LM on all training texts
    (no labels) and is compared with the same classifier from scratch. Every run gets at least
    ``--min-steps`` optimizer steps (more epochs for small n)."""
    tr_x, tr_y, te_x, te_y = _task(args.task)
    tr_toks, te_toks = tokens(tr_x, f"{args.task}_train"), tokens(te_x, f"{args.task}_test")
    base = _variant(args)
    rows = {}
    for n in args.sizes:
        n = min(n, len(tr_toks))
        for seed in args.seeds:
            idx = np.random.default_rng(seed).permutation(len(tr_toks))[:n]
            epochs = max(base.clf_epochs, -(-args.min_steps * 32 // n))
            v = dataclasses.replace(base, clf_epochs=epochs)
            sub_t, sub_y = [tr_toks[i] for i in idx], [tr_y[i] for i in idx]
            classes = sorted(set(tr_y))  # a small sample may lack a rare class (TREC's ABBR)
            r = ours(args.task, sub_t, sub_y, te_toks, te_y, seed, v, directions=["fwd"], lm_toks=tr_toks,
                     tag=f"_n{n}", classes=classes)
            r["from scratch"] = scratch(args.task, sub_t, sub_y, te_toks, te_y, seed, v, tag=f"_n{n}",
                                        classes=classes)
            _add(rows, {f"n={n} {k}": val for k, val in r.items()}, seed)
    table = _summary(rows)
    record(f"sample_{args.task}{args.tag}", dict(task=args.task, sizes=args.sizes, seeds=args.seeds,
                                                variant=dataclasses.asdict(base), table=table, runs=rows))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, label in (("ours fwd", "ULMFiT (ours), LM fine-tuned on all texts"), ("from scratch", "from scratch")):
        xs = [min(n, len(tr_toks)) for n in args.sizes]
        m = [100 * table[f"n={x} {method}"]["mean"] for x in xs]
        sd = [100 * table[f"n={x} {method}"]["std"] for x in xs]
        ax.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{args.task}: sample efficiency (mean ± std, {len(args.seeds)} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(REPO / "benchmarks" / "results" / f"sample_efficiency_{args.task}{args.tag}.png", dpi=110)


def merge(args):
    """One table from the tagged result files of runs made in parallel (``--tag _a``, ``--tag _b``...)."""
    import json
    parts = [REPO / "benchmarks" / "results" / f"{args.kind}_{args.task}{t}.json" for t in args.parts]
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise SystemExit(f"missing result files: {missing}")
    rows, commands, seeds = {}, [], []
    for f in parts:
        d = json.loads(f.read_text())
        commands.append(d["command"])
        seeds += d["result"]["seeds"]
        for k, vs in d["result"]["runs"].items():
            rows.setdefault(k, []).extend(vs)
    print("\n".join(commands))
    record(f"{args.kind}_{args.task}{args.tag}", dict(task=args.task, seeds=sorted(set(seeds)), parts=commands,
                                           table=_summary(rows), runs=rows))


def _common(p, directions=("fwd", "bwd")):
    p.add_argument("--task", choices=["trec6", "mr"], default="trec6")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--directions", nargs="+", choices=["fwd", "bwd"], default=list(directions),
                   help="directions of our model (both: the ensemble too); each needs its stage 1")
    p.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="override fields of the recipe (class Variant)")
    p.add_argument("--tag", default="", help="suffix of the recorded results file")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("stage1")
    p.add_argument("--direction", choices=["fwd", "bwd"], default="fwd")
    p.add_argument("--max-tokens", type=int, default=10**9)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--max-vocab", type=int, default=30000)
    p.add_argument("--drop-mult", type=float, default=1.0)
    p.add_argument("--bf16", action="store_true")
    p.set_defaults(func=stage1)
    p = sub.add_parser("compare")
    p.add_argument("--methods", default="tfidf,ours,scratch,stock")
    p.set_defaults(func=compare)
    _common(p)
    p = sub.add_parser("tune")
    p.set_defaults(func=tune)
    _common(p)
    p = sub.add_parser("ablate")
    p.add_argument("--variants", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS), metavar="VARIANT")
    p.set_defaults(func=ablate)
    _common(p)
    p = sub.add_parser("sample")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 500, 1000, 5452])
    p.add_argument("--min-steps", type=int, default=300)
    p.set_defaults(func=sample)
    _common(p, directions=["fwd"])
    p = sub.add_parser("merge")
    p.add_argument("--kind", choices=["compare", "ablate", "sample", "tune"], required=True)
    p.add_argument("--parts", nargs="+", required=True, help="the --tag of each run to merge, e.g. _a _b")
    p.add_argument("--tag", default="", help="suffix of the merged results file")
    p.add_argument("--task", choices=["trec6", "mr"], default="trec6")
    p.set_defaults(func=merge)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
