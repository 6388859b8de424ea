"""Classification inference: documents/s of our batch prediction vs fastai's ``get_preds``, same weights.

A 200/400/3 classifier is trained once on TREC-6 with our pipeline (cached outside the
repository), converted into fastai's ``text_classifier_learner`` model (AWD_LSTM +
PoolingLinearClassifier, seq_len 72, max_len 1440; ours set to the same bptt and max_len), and
both predict the same pre-tokenised documents: TREC-6's 500 test questions, and long
documents (BBC News articles read with the same weights; their words are mostly out of
TREC's vocabulary, which changes nothing in the compute). fastai reads its own numericalised
validation DataLoader (tokenisation not timed); ours is timed from tokens (numericalisation
included). Median of ``--repeats`` passes after one warm-up pass.

    python benchmarks/clf_inference.py
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import CACHE, DATA, record, tokens  # noqa: E402

from ulmfit_callbacks import AWDLSTMConfig, Corpus, Vocab, load_bbc_news, to_fastai_state_dict  # noqa: E402
from ulmfit_callbacks.ensemble import predict_proba  # noqa: E402
from ulmfit_callbacks.pipeline import Recipe, load_classifier, train_classifier  # noqa: E402

CFG = AWDLSTMConfig(emb_sz=200, n_hid=400, n_layers=3)
HEAD = {"0": "0.0", "2": "0.2", "4": "1.0", "6": "1.2"}  # our flat head -> fastai's LinBnDrop blocks


def trained_classifier():
    out = CACHE / "clf_inference_trec6"
    if not (out / "weights.pt").exists():
        tr = pd.read_csv(DATA / "trec6" / "train.csv")
        te = pd.read_csv(DATA / "trec6" / "test.csv")
        tr_t, te_t = tokens(tr.text, "trec6_train"), tokens(te.text, "trec6_test")
        train_classifier(Corpus(tr_t, tr.label.tolist()), Corpus(te_t, te.label.tolist()), out,
                         Recipe(epochs=3, lr=2e-2, gradual_unfreezing=False), config=CFG,
                         vocab=Vocab.build(tr_t, max_vocab=30000, min_freq=2), seed=0)
    return load_classifier(out)


def fastai_twin(ours, texts, labels, bs):
    """fastai's text classifier over ``texts`` (its validation set) holding our weights."""
    from fastai.text.all import AWD_LSTM, TextDataLoaders, awd_lstm_clas_config, text_classifier_learner
    classes = list(ours.dls.classes)
    if any(l not in classes for l in labels):  # unlabelled documents: any labels covering every class
        labels = [classes[i % len(classes)] for i in range(len(texts))]
    df = pd.DataFrame({"text": list(texts) * 2, "label": list(labels) * 2,
                       "is_valid": [False] * len(texts) + [True] * len(texts)})
    dls = TextDataLoaders.from_df(df, text_col="text", label_col="label", valid_col="is_valid",
                                  text_vocab=list(ours.dls.vocab.itos), bs=bs, seq_len=72)
    sizes = dict(emb_sz=CFG.emb_sz, n_hid=CFG.n_hid, n_layers=CFG.n_layers)
    learn = text_classifier_learner(dls, AWD_LSTM, config=dict(awd_lstm_clas_config, **sizes), pretrained=False,
                                    lin_ftrs=[50], seq_len=72, max_len=1440)
    if list(dls.vocab[1]) != classes:
        raise RuntimeError(f"class order differs: {dls.vocab[1]} vs {classes}")
    sd = ours.model.state_dict()
    enc = {"encoder." + k[len("encoder.module."):]: v for k, v in sd.items() if k.startswith("encoder.module.")}
    state = {f"0.module.{k[2:]}": v for k, v in to_fastai_state_dict(enc).items() if k.startswith("0.")}
    head = {k[len("head."):]: v.clone() for k, v in sd.items() if k.startswith("head.")}
    for bn, lin in (("0", "2"), ("4", "6")):
        # fastai's head linears have no bias (LinBnDrop with bn=True); ours do. The bias b is moved
        # into the preceding BatchNorm's shift: W (x + d) = W x + b for d = pinv(W) b (W has full row rank)
        w, b = head[f"{lin}.weight"].double(), head.pop(f"{lin}.bias").double()
        head[f"{bn}.bias"] += (torch.linalg.pinv(w) @ b).float()
    for k, v in head.items():
        i, rest = k.split(".", 1)
        state[f"1.layers.{HEAD[i]}.{rest}"] = v
    learn.model.load_state_dict(state)
    return learn


def timed(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)


def bench(name, ours, toks, texts, labels, args):
    fa = fastai_twin(ours, texts, labels, args.bs)
    same_ids = np.mean([np.array_equal(fa.dls.valid_ds[i][0].numpy(), ours.dls.vocab.numericalize(toks[i]))
                        for i in range(len(toks))])
    with fa.no_bar():
        (p_fa, _), t_fa = timed(lambda: fa.get_preds(ds_idx=1), args.repeats)
    ours.model.encoder.bptt, ours.model.encoder.max_len = 72, 1440
    rows = {"fastai get_preds (fp32, bs %d)" % args.bs: dict(seconds=t_fa, probs=p_fa)}
    for bf16 in (False, True):
        for bs in sorted({args.bs, args.ours_bs}):
            p, t = timed(lambda: predict_proba(ours, Corpus(toks), bs=bs, bf16=bf16), args.repeats)
            rows[f"ours predict_proba ({'bf16' if bf16 else 'fp32'}, bs {bs})"] = dict(seconds=t, probs=p)
    n = len(toks)
    out = {}
    print(f"\n{name}: {n} documents, {sum(map(len, toks)) / n:.0f} tokens on average; "
          f"fastai's token ids equal ours for {100 * same_ids:.1f}% of them")
    out["same_token_ids"] = float(same_ids)
    for k, r in rows.items():
        agree = float((r["probs"].argmax(1) == p_fa.argmax(1)).float().mean())
        diff = float((r["probs"] - p_fa).abs().max())
        out[k] = dict(docs_per_s=n / r["seconds"], vs_fastai=t_fa / r["seconds"], argmax_agreement=agree,
                      max_prob_diff=diff)
        print(f"  {k:40s} {n / r['seconds']:8.1f} docs/s  {t_fa / r['seconds']:5.2f}x  "
              f"same argmax as fastai {100 * agree:5.1f}%  max |p - p_fastai| {diff:.4f}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bs", type=int, default=64, help="fastai's batch size (its default)")
    ap.add_argument("--ours-bs", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-docs", type=int, default=200)
    args = ap.parse_args()
    ours = trained_classifier()
    te = pd.read_csv(DATA / "trec6" / "test.csv")
    res = dict(trec6=bench("TREC-6 test", ours, tokens(te.text, "trec6_test"), te.text.tolist(), te.label.tolist(), args))
    bbc = load_bbc_news(verbose=False).sample(args.long_docs, random_state=0)
    res["bbc_long"] = bench("BBC News articles", ours, tokens(bbc.text, f"bbc_sample{args.long_docs}"),
                            bbc.text.tolist(), [None] * len(bbc), args)
    record("clf_inference", dict(bs=args.bs, ours_bs=args.ours_bs, repeats=args.repeats, threads=torch.get_num_threads(),
                                 results=res))


if __name__ == "__main__":
    np.random.seed(0)
    main()
