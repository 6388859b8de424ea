"""TREC-6 and MR at CPU scale: ULMFiT (ours) vs the stock fastai recipe vs from scratch vs TF-IDF.

Stage 1 runs once per direction on ``../shared/data/general`` and is cached outside the
repository (``~/.cache/ulmfit_callbacks/bench``, or ``$ULMFIT_BENCH_CACHE``); every method
that uses pretraining starts from those weights.

    python benchmarks/classification.py stage1 --direction fwd        # then --direction bwd
    python benchmarks/classification.py compare --task trec6 --seeds 0 1 2
    python benchmarks/classification.py compare --task mr --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import time
import warnings

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from common import CACHE, DATA, record, tokens  # noqa: E402
from ulmfit_callbacks import AWDLSTMConfig, BF16Autocast, Vocab  # noqa: E402
from ulmfit_callbacks.ensemble import predict_tokens  # noqa: E402
from ulmfit_callbacks.pipeline import Recipe, finetune_lm, load_artifact, pretrain_lm, train_classifier  # noqa: E402

CFG = AWDLSTMConfig(emb_sz=200, n_hid=400, n_layers=3)  # the CPU config of the stock numbers


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
    learn, m = pretrain_lm(None, None, out, CFG, Recipe(epochs=args.epochs, lr=args.lr, drop_mult=args.drop_mult), backwards=args.direction == "bwd",
                           bs=args.bs, bptt=70, max_vocab=args.max_vocab, tokens=(toks, vtoks), seed=0,
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
    p = predict_tokens(learn, toks)
    y = np.array([learn.dls.classes.index(l) for l in labels])
    return p, float((p.argmax(1).numpy() != y).mean())


def ours(task, tr_toks, tr_y, te_toks, te_y, seed, lm_epochs, clf_epochs, lr, stage1_dirs=("fwd", "bwd")):
    """Full ULMFiT: LM fine-tuning (disc. lrs + STLR), classifier (gradual unfreezing + disc. lrs + STLR)."""
    res, probs = {}, {}
    for d in stage1_dirs:
        lm_dir = CACHE / f"lm_{task}_{d}"
        if not (lm_dir / "weights.pt").exists():  # stage 2 once per task and direction
            finetune_lm(None, None, lm_dir, Recipe(epochs=lm_epochs, lr=1e-2), pretrained=CACHE / f"stage1_{d}",
                        backwards=d == "bwd", bptt=70, max_vocab=30000, tokens=(tr_toks, te_toks[:200]), seed=0,
                        bs=32)
        t = time.time()
        from ulmfit_callbacks.pipeline import load_classifier  # noqa: F401
        learn, _ = train_classifier(None, tr_y, None, te_y, CACHE / f"clf_{task}_{d}_{seed}",
                                    Recipe(epochs=clf_epochs, lr=lr, unfreeze_schedule=[1, 2, 3]), lm=lm_dir,
                                    backwards=d == "bwd", tokens=(tr_toks, te_toks), seed=seed)
        probs[d], err = _error(learn, te_toks, te_y)
        res[f"ours {d}"] = dict(error=err, seconds=round(time.time() - t, 1))
    if len(probs) == 2:
        y = np.array([learn.dls.classes.index(l) for l in te_y])
        res["ours fwd+bwd ensemble"] = dict(error=float((((probs["fwd"] + probs["bwd"]) / 2).argmax(1).numpy() != y).mean()))
    return res


def scratch(task, tr_toks, tr_y, te_toks, te_y, seed, clf_epochs, lr):
    """The same classifier and recipe, no stage 1 and no stage 2 (vocab from the task's training text)."""
    vocab = Vocab.build(tr_toks, max_vocab=30000, min_freq=2)
    t = time.time()
    learn, _ = train_classifier(None, tr_y, None, te_y, CACHE / f"scratch_{task}_{seed}",
                                Recipe(epochs=clf_epochs, lr=lr, gradual_unfreezing=False), config=CFG, vocab=vocab,
                                tokens=(tr_toks, te_toks), seed=seed)
    return dict(error=_error(learn, te_toks, te_y)[1], seconds=round(time.time() - t, 1))


def stock_fastai(task, tr_x, tr_y, te_x, te_y, seed, lm_epochs):
    """fastai's ULMFiT tutorial recipe (fit_one_cycle, freeze_to(-2), (-3), unfreeze, slice(lr/2.6**4, lr)),
    fastai's own data, AWD_LSTM and learners, starting from the same stage-1 weights."""
    from fastai.text.all import (AWD_LSTM, TextDataLoaders, accuracy, awd_lstm_clas_config, awd_lstm_lm_config,
                                 language_model_learner, text_classifier_learner)
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
    load_pretrained(ours_lm, state, vocab.itos, Vocab(list(dls_lm.vocab)))
    lm.model.load_state_dict(to_fastai_state_dict(ours_lm.state_dict()))
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


def compare(args):
    tr_x, tr_y, te_x, te_y = _task(args.task)
    tr_toks, te_toks = tokens(tr_x, f"{args.task}_train"), tokens(te_x, f"{args.task}_test")
    rows = {}
    for seed in args.seeds:
        r = {}
        if "tfidf" in args.methods:
            r["TF-IDF 1-2 grams + LR (C=10)"] = dict(error=tfidf(tr_x, tr_y, te_x, te_y, seed))
        if "ours" in args.methods:
            r.update(ours(args.task, tr_toks, tr_y, te_toks, te_y, seed, args.lm_epochs, args.clf_epochs, args.lr,
                          stage1_dirs=args.directions))
        if "scratch" in args.methods:
            r["same classifier from scratch"] = scratch(args.task, tr_toks, tr_y, te_toks, te_y, seed, args.clf_epochs, args.lr)
        if "stock" in args.methods:
            r["stock fastai recipe, same stage 1"] = stock_fastai(args.task, tr_x, tr_y, te_x, te_y, seed, args.lm_epochs)
        for k, v in r.items():
            rows.setdefault(k, []).append(v)
            print(f"seed {seed} {k:38s} error {v['error']:.4f}", flush=True)
    table = {k: dict(mean=float(np.mean([v["error"] for v in vs])), std=float(np.std([v["error"] for v in vs])),
                     n=len(vs), seconds=[v.get("seconds") for v in vs]) for k, vs in rows.items()}
    for k, v in table.items():
        print(f"{k:38s} {100 * v['mean']:5.1f} ± {100 * v['std']:.1f} % (n={v['n']})")
    record(f"compare_{args.task}", dict(task=args.task, seeds=args.seeds, lm_epochs=args.lm_epochs,
                                        clf_epochs=args.clf_epochs, lr=args.lr, table=table, runs=rows))


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
    p.add_argument("--task", choices=["trec6", "mr"], required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", default="tfidf,ours,scratch,stock")
    p.add_argument("--lm-epochs", type=int, default=2)
    p.add_argument("--clf-epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--directions", nargs="+", choices=["fwd", "bwd"], default=["fwd", "bwd"],
                   help="directions of our model (both: the ensemble too); each needs its stage 1")
    p.set_defaults(func=compare)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
