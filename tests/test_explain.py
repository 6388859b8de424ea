"""Explanations: integrated gradients' completeness, both directions, HTML, top losses, faithfulness, CLI."""
import argparse
import copy
import html

import numpy as np
import pytest
import torch

from ulmfit_callbacks import AWDLSTMConfig, ClassifierLoader, ULMFiTDataLoaders, Vocab, ulmfit_classifier_learner
from ulmfit_callbacks.explain import Explanation, add_parser, attributions, explain, faithfulness, top_losses
from ulmfit_callbacks.tokenizer import Tokenizer

FILLER = ["the", "a", "movie", "plot", "was", "it", "and", "of", "actor", "scene", "to", "is", "this", "film", "with",
          "story", "music", "end", "one", "time"]
KEYS = {"good": "pos", "bad": "neg"}


def _docs(n, seed):
    """Token lists whose label is decided by one keyword (``good`` -> pos, ``bad`` -> neg) at a random place."""
    rng = np.random.default_rng(seed)
    toks, labels, where = [], [], []
    for _ in range(n):
        body = [str(w) for w in rng.choice(FILLER, rng.integers(4, 10))]
        key = str(rng.choice(list(KEYS)))
        at = int(rng.integers(0, len(body) + 1))
        body.insert(at, key)
        toks.append(["xxbos"] + body)
        labels.append(KEYS[key])
        where.append(at + 1)
    return toks, labels, where


VOCAB = Vocab.build([FILLER + list(KEYS)], min_freq=1)
CLASSES = ["neg", "pos"]


def _learner(backwards=False, multi_label=False, arch="lstm", seed=0, n=320):
    torch.manual_seed(seed)
    toks, labels, _ = _docs(n, seed)
    ids = [VOCAB.numericalize(t)[::-1].copy() if backwards else VOCAB.numericalize(t) for t in toks]
    if multi_label:
        y = np.array([[float(l == c) for c in CLASSES] for l in labels], dtype=np.float32)
    else:
        y = np.array([CLASSES.index(l) for l in labels])
    train = ClassifierLoader(ids[:-40], y[:-40], bs=32, shuffle=True, seed=seed)
    valid = ClassifierLoader(ids[-40:], y[-40:], bs=64)
    dls = ULMFiTDataLoaders(train, valid, vocab=VOCAB, backwards=backwards, kind="classifier", classes=CLASSES,
                            multi_label=multi_label, device="cpu")
    cfg = AWDLSTMConfig(emb_sz=16, n_hid=24, n_layers=2, arch=arch)
    return ulmfit_classifier_learner(dls, config=cfg, bptt=4, drop_mult=0.1, hidden=16)  # bptt 4: several chunks


@pytest.fixture(scope="module", params=[False, True], ids=["fwd", "bwd"])
def keyword_learner(request):
    """A tiny classifier trained until the keyword decides its prediction (forward and backward)."""
    learn = _learner(backwards=request.param)
    with learn.no_bar(), learn.no_logging():
        learn.fit(10, 2e-2)
    return learn


def test_keyword_gets_the_top_attribution_in_text_order(keyword_learner):
    learn = keyword_learner
    toks, labels, where = _docs(30, seed=123)
    hits, correct = 0, 0
    for t, l, w in zip(toks, labels, where):
        ex = explain(learn, t, method="ig", steps=24)
        assert ex.tokens == t and ex.scores.shape == (len(t),)
        correct += ex.predicted == l
        hits += int(np.argmax(ex.scores)) == w  # text order, also for the backward model
    assert correct >= 27, f"the toy classifier did not learn the keyword rule ({correct}/30)"
    assert hits >= 27, f"the keyword had the top attribution in only {hits}/30 texts"


def test_ig_completeness_and_whole_document_forward_is_the_models_function(keyword_learner):
    learn = keyword_learner
    toks, _, _ = _docs(8, seed=7)
    for t in toks:
        ex = explain(learn, t, method="ig", steps=64)
        # F(x) read in one piece equals the model's chunked prediction (bptt=4)
        assert ex.score == pytest.approx(ex.label_probability, abs=1e-5)
        gap = abs(ex.scores.sum() - (ex.score - ex.baseline_score))
        assert gap < 0.02 * max(1.0, abs(ex.score - ex.baseline_score)), (gap, ex.score, ex.baseline_score)
    # other class as target: its probability, and still complete
    first = explain(learn, toks[0], method="attention")
    ex = explain(learn, toks[0], target=1 - CLASSES.index(first.predicted), steps=64)
    assert ex.predicted == first.predicted and ex.label != ex.predicted and ex.label_probability == pytest.approx(1 - ex.probability, abs=1e-5)
    assert ex.scores.sum() == pytest.approx(ex.score - ex.baseline_score, abs=0.02)


def _reference_ig(learn, toks, target, steps):
    """IG without hooks: the straight path from the zero embedding is the embedding matrix scaled by alpha,
    and with every token distinct, a row's gradient is its position's gradient (text order)."""
    model = copy.deepcopy(learn.model).eval()
    model.encoder.bptt = 10_000
    w = model.encoder.module.embedding.weight
    ids = torch.as_tensor(VOCAB.numericalize(toks))
    ids = ids.flip(0) if learn.dls.backwards else ids
    base, grads = w.detach().clone(), torch.zeros_like(w)
    ends = []
    for a in [(j + 0.5) / steps for j in range(steps)] + [1.0, 0.0]:
        w.data.copy_(a * base)
        model.zero_grad()
        p = model(ids[None]).softmax(-1)[0, target]
        if a in (0.0, 1.0):
            ends.append(float(p.detach()))
            continue
        p.backward()
        grads += w.grad / steps
    ref = (base * grads).sum(-1)[torch.as_tensor(VOCAB.numericalize(toks))]
    return ref.numpy(), ends


def test_ig_matches_a_hook_free_reference(keyword_learner):
    learn = keyword_learner
    toks = ["xxbos", "the", "plot", "was", "good", "and", "music", "of", "this", "film"]
    ex = explain(learn, toks, steps=32)
    ref, (f1, f0) = _reference_ig(learn, toks, CLASSES.index(ex.label), 32)
    assert ex.score == pytest.approx(f1, abs=1e-5) and ex.baseline_score == pytest.approx(f0, abs=1e-5)
    assert abs(f1 - f0) > 0.1  # completeness is not trivially 0 = 0
    np.testing.assert_allclose(ex.scores, ref, atol=1e-5)


@pytest.mark.parametrize("arch,multi_label", [("lstm", True), ("qrnn", False)])
def test_completeness_untrained_qrnn_and_multi_label(arch, multi_label):
    learn = _learner(arch=arch, multi_label=multi_label, n=60)
    with torch.no_grad():  # large random weights: the score moves between baseline and input
        learn.model.encoder.module.embedding.weight.mul_(30)
        [m for m in learn.model.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(30)
    t = _docs(1, seed=3)[0][0]
    for target in ("neg", "pos"):
        ex = explain(learn, t, target=target, steps=48)
        assert ex.label == target
        probs = torch.sigmoid if multi_label else (lambda z: z.softmax(-1))
        with torch.no_grad():
            learn.model.eval()
            p = probs(learn.model(torch.as_tensor(VOCAB.numericalize(t))[None]))[0, CLASSES.index(target)]
        assert ex.score == pytest.approx(float(p), abs=1e-5)
        assert abs(ex.score - ex.baseline_score) > 0.01  # completeness is not trivially 0 = 0
        assert ex.scores.sum() == pytest.approx(ex.score - ex.baseline_score, abs=1e-3)
    lo = explain(learn, t, target="pos", score="logit", steps=48)
    assert abs(lo.score - lo.baseline_score) > 0.05
    assert lo.scores.sum() == pytest.approx(lo.score - lo.baseline_score, abs=2e-2 * max(1, abs(lo.score)))


def test_state_is_restored_and_no_parameter_gradients():
    learn = _learner(n=60)
    model = learn.model.train()
    bptt, max_len = model.encoder.bptt, model.encoder.max_len
    explain(learn, _docs(1, 0)[0][0], method="attention")
    assert model.training and (model.encoder.bptt, model.encoder.max_len) == (bptt, max_len)
    assert all(p.grad is None for p in model.parameters())
    assert not model.encoder.module.input_dp._forward_hooks


def test_methods_agree_on_shapes_and_attention_is_fastai_v1_style(keyword_learner):
    learn = keyword_learner
    toks, _, where = _docs(6, seed=11)
    ids = [VOCAB.numericalize(t) for t in toks]
    ids = [d[::-1].copy() for d in ids] if learn.dls.backwards else ids
    att = attributions(learn, ids, [0] * len(ids), method="attention")
    assert all(a.shape == (len(d),) and a.max() == pytest.approx(1.0) and (a >= 0).all() for a, d in zip(att, ids))
    # batched = one by one (padding and row order do not leak between documents)
    one = [attributions(learn, [d], [0], method="grad_input")[0] for d in ids]
    many = attributions(learn, ids, [0] * len(ids), method="grad_input", budget=40)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        attributions(learn, ids, [0] * len(ids), method="lime")


def test_html_escapes_every_token_and_folds_case_markers(tmp_path):
    learn = _learner(n=60)
    toks = ["xxbos", "xxmaj", "good", "<script>", "a&b", '"quoted"', "xxup", "bad", "xxunk"]
    ex = explain(learn, toks, steps=8)
    out = ex.to_html()
    for t in toks:
        assert html.escape(t) in out
    assert "<script>" not in out and "a&b" not in out
    assert ">Good</span>" in out and ">BAD</span>" in out  # xxmaj/xxup shown as case, not as tokens
    assert 'class="tok sp"' in out  # xxbos, xxunk: grey tags
    assert ex._repr_html_() == out
    page = ex.save_html(tmp_path / "x" / "ex.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and out in page
    top = ex.top(3)
    assert len(top) == 3 and top[0][1] == ex.scores.max() and top[0][1] >= top[1][1] >= top[2][1]


def test_texts_are_tokenised_as_the_model_was():
    learn = _learner(n=60)
    assert explain(learn, "The plot was good").tokens == ["xxbos", "xxmaj", "the", "plot", "was", "good"]  # fastai's rules

    class Lower(Tokenizer):
        def __call__(self, texts):
            return [["xxbos"] + t.lower().split() for t in texts]

        def to_dict(self):
            return {"name": "lower"}
    learn.dls.tokenizer = Lower()  # the model's own tokenizer, whatever it is
    assert explain(learn, "The plot was good").tokens == ["xxbos", "the", "plot", "was", "good"]
    assert len(explain(learn, ["xxbos", "good"]).scores) == 2  # tokens are taken as they are


def test_top_losses_sorted_with_columns(keyword_learner):
    learn = keyword_learner
    toks, labels, _ = _docs(40, seed=5)
    flip = {"pos": "neg", "neg": "pos"}
    labels = [flip[l] if i % 10 == 0 else l for i, l in enumerate(labels)]  # 4 wrong labels
    df = top_losses(learn, toks, labels, k=6)
    assert list(df.columns) == ["text", "label", "predicted", "probability", "loss"] and len(df) == 6
    assert df.loss.is_monotonic_decreasing
    np.testing.assert_allclose(df.loss, -np.log(df.probability), rtol=1e-6)
    assert set(df.index[:4]) == {0, 10, 20, 30}  # the flipped labels lose most
    assert (df.label.iloc[:4] != df.predicted.iloc[:4]).all()
    ex = top_losses(learn, toks, labels, k=2, explain="ig", n_tokens=2)
    assert list(ex.columns[-2:]) == ["top_tokens", "html"]
    assert all(any(k in s.split(",")[0] for k in KEYS) for s in ex.top_tokens)
    with pytest.raises(ValueError, match="unknown class"):
        top_losses(learn, toks[:1], ["maybe"])


def test_faithfulness_topk_beats_random(keyword_learner):
    learn = keyword_learner
    toks, _, _ = _docs(40, seed=9)
    res = {m: faithfulness(learn, toks, k=1, n_random=3, method=m, steps=12) for m in ("ig", "attention", "grad_input")}
    for m in ("ig", "grad_input"):
        r = res[m]
        assert r["n"] == 40 and r["n_skipped"] == 0
        assert r["topk_drop"] > r["random_drop"] + 0.2, r
        assert r["frac_topk_gt_random"] >= 0.9, r
    # the toy model is saturated (p ~ 1): the gradient norm at x alone misses the keyword, the path integral does not
    assert res["ig"]["frac_topk_gt_random"] >= res["attention"]["frac_topk_gt_random"]
    assert res["ig"]["random_drop"] == pytest.approx(res["attention"]["random_drop"])  # the same random draws
    with pytest.raises(ValueError, match="no text"):
        faithfulness(learn, [["xxbos", "good"]], k=1)


def test_cli_explain(keyword_learner, tmp_path, capsys):
    from ulmfit_callbacks.pipeline import save_artifact
    learn = keyword_learner
    run = tmp_path / "run"
    save_artifact(run / ("clf_bwd" if learn.dls.backwards else "clf_fwd"), learn, "classifier")
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="command"))
    a = ap.parse_args(["explain", "the plot was good and the music", "--model", str(run), "--html",
                       str(tmp_path / "e.html"), "--top", "2", "--device", "cpu"])
    ex = a.func(a)
    out = capsys.readouterr().out
    assert isinstance(ex, Explanation) and ex.predicted == "pos"
    lines = [l.split() for l in out.splitlines() if l.startswith("  ")]
    assert len(lines) == 2 and lines[0][1] == "good"
    assert (tmp_path / "e.html").exists() and "good" in (tmp_path / "e.html").read_text()
    with pytest.raises(FileNotFoundError):
        a.func(ap.parse_args(["explain", "x", "--model", str(tmp_path / "nothing")]))
