"""Classifier stage: BPT3C, masked concat pooling, encoder loading, multi-label, ensemble, end to end."""
import numpy as np
import pytest
import torch

from ulmfit_callbacks import (
    AWDLSTM,
    AWDLSTMConfig,
    BPT3CEncoder,
    Corpus,
    DiscriminativeLR,
    ForwardBackwardEnsemble,
    GradualUnfreezing,
    SlantedTriangularLR,
    classifier_dataloaders,
    encoder_state_dict,
    lm_dataloaders,
    ulmfit_classifier_learner,
    ulmfit_lm_learner,
)
from ulmfit_callbacks.ensemble import predict_proba

PAD = 1


def _encoder(bptt=4, max_len=8, seed=0, vocab=40):
    torch.manual_seed(seed)
    return BPT3CEncoder(AWDLSTM(vocab, AWDLSTMConfig(emb_sz=6, n_hid=10, n_layers=2)), bptt=bptt, max_len=max_len)


def _naive_pool(enc, doc):
    """Concat pooling computed the slow way: one document, no padding, chunk by chunk."""
    enc.module.reset()
    outs = [enc.module(doc[None, i: i + enc.bptt]) for i in range(0, len(doc), enc.bptt)]
    H = torch.cat(outs, 1)[0]
    return torch.cat([H[-1], H.max(0).values, H.mean(0)])


def _pad(docs, side):
    sl = max(len(d) for d in docs)
    x = torch.full((len(docs), sl), PAD)
    for r, d in enumerate(docs):
        s = side[r] if isinstance(side, list) else side
        if s == "right":
            x[r, : len(d)] = d
        else:
            x[r, sl - len(d):] = d
    return x


@pytest.mark.parametrize("side", ["right", "left", ["left", "right", "left", "right"]])
def test_padding_invariance_and_pooling_against_naive(side):
    enc = _encoder().eval()
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(2, 40, (n,), generator=g) for n in (13, 3, 9, 1)]
    with torch.no_grad():
        batched = enc(_pad(docs, side))
        for r, d in enumerate(docs):
            alone = enc(d[None])[0]
            torch.testing.assert_close(batched[r], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(alone, _naive_pool(enc, d), atol=1e-6, rtol=0)


def test_fastai_chunk_aligned_padding_layout():
    """fastai's pad_input_chunk: pads in multiples of bptt first, the remainder last (fastai issue 3379)."""
    enc = _encoder(bptt=4).eval()
    docs = [torch.arange(2, 13), torch.arange(20, 25)]  # 11 and 5 tokens -> padded to 11
    x = torch.full((2, 11), PAD)
    x[0] = docs[0]
    x[1, 4:9] = docs[1]  # one chunk of padding first, 2 pads at the end
    with torch.no_grad():
        out = enc(x)
        torch.testing.assert_close(out[1], enc(docs[1][None])[0], atol=1e-5, rtol=0)


def test_gradient_only_through_the_last_max_len_tokens():
    enc = _encoder(bptt=4, max_len=8).train()
    for m in enc.modules():  # dropout off so the check is exact
        if hasattr(m, "p"):
            m.p = 0.0
    enc.module.config = AWDLSTMConfig(emb_sz=6, n_hid=10, n_layers=2, embed_p=0, input_p=0, hidden_p=0, weight_p=0)
    early, late = [5, 6, 7, 8], [9, 10, 11, 12]
    doc = torch.tensor(early * 3 + [13] * 4 + late * 2)  # 24 tokens: chunks at 0,4,...,20; grad from 16 on
    emb = enc.module.embedding.weight
    emb.grad = None
    enc(doc[None]).sum().backward()
    assert (emb.grad[early] == 0).all(), "tokens only before the last max_len got gradient"
    assert (emb.grad[late].abs().sum(1) > 0).all()
    # and they still shape the pooled features: max/mean see every token
    with torch.no_grad():
        doc2 = doc.clone()
        doc2[:4] = 20
        assert not torch.allclose(enc(doc[None]), enc(doc2[None]))


def test_bounded_graph_for_long_documents():
    """Only the grad chunks keep a graph: the number of saved LSTM calls does not grow with length."""
    calls = []
    enc = _encoder(bptt=10, max_len=30)
    orig = enc.module.forward

    def counting(x):
        out = orig(x)
        calls.append(out.requires_grad)
        return out
    enc.module.forward = counting
    enc(torch.randint(2, 40, (2, 1000))).sum().backward()
    assert len(calls) == 100 and sum(calls) == 3


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the calls that read a tensor's value on the host: on a GPU each waits for the queued work."""
    READS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("train", [True, False])
def test_one_host_read_per_batch_whatever_the_number_of_chunks(train):
    """The chunk loop decides rows and graph on the host from one copy of the lengths per batch."""
    enc = _encoder(bptt=4, max_len=8).train(train)
    g = torch.Generator().manual_seed(0)
    for lengths in [(37, 3, 20, 9), (5, 2)]:
        docs = [torch.randint(2, 40, (n,), generator=g) for n in lengths]
        x = _pad(docs, ["left", "right"] * (len(docs) // 2))
        with _HostReads() as reads:
            out = enc(x)
        assert reads.calls == ["tolist"], reads.calls
        if train:
            out.sum().backward()


def test_rejects_empty_documents():
    with pytest.raises(ValueError, match="no tokens"):
        _encoder()(torch.tensor([[3, 4], [PAD, PAD]]))


@pytest.fixture
def fitted_lm(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    return learn


def test_encoder_loads_by_name_and_mismatches_are_refused(fitted_lm, clf_dls_factory, tiny_config, task_corpus):
    dls = clf_dls_factory(fitted_lm.dls.vocab)
    clf = ulmfit_classifier_learner(dls, config=tiny_config, encoder=fitted_lm)
    for k, v in encoder_state_dict(fitted_lm.model).items():
        assert torch.equal(encoder_state_dict(clf.model)[k], v)
    bwd = clf_dls_factory(fitted_lm.dls.vocab, backwards=True)
    with pytest.raises(ValueError, match="direction mismatch"):
        ulmfit_classifier_learner(bwd, config=tiny_config, encoder=fitted_lm)
    other_vocab = lm_dataloaders(task_corpus[0][:200], task_corpus[1], bs=4, bptt=5, min_freq=1).vocab
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        ulmfit_classifier_learner(clf_dls_factory(other_vocab), config=tiny_config, encoder=fitted_lm)
    with pytest.raises(ValueError, match="does not fit this classifier"):
        ulmfit_classifier_learner(dls, config=AWDLSTMConfig(emb_sz=8, n_hid=12, n_layers=3),
                                  encoder=encoder_state_dict(fitted_lm.model))
    # data of the other direction given to a trained learner later
    clf.dls = bwd
    with pytest.raises(ValueError, match="forward model but the data are backward"):
        clf.fit(1)


def test_multi_label(lm_dls, tiny_config, task):
    train, _ = task
    labels = [f"{a};{'long' if len(t.split()) > 30 else 'short'}" for a, t in zip(train.label[:200], train.text[:200])]
    dls = classifier_dataloaders(Corpus.from_texts(train.text[:200], labels), vocab=lm_dls.vocab, multi_label=True, bs=16)
    assert dls.multi_label and "long" in dls.classes
    clf = ulmfit_classifier_learner(dls, config=tiny_config)
    with clf.no_bar(), clf.no_logging():
        clf.fit(1, 1e-2)
    probs, y = clf.get_preds()
    assert probs.shape == y.shape and ((probs >= 0) & (probs <= 1)).all()
    assert not torch.allclose(probs.sum(1), torch.ones(len(probs)))  # sigmoid, not softmax
    assert "accuracy_multi" in clf.recorder.metric_names


def test_get_preds_in_input_order(fitted_lm, clf_dls_factory, tiny_config):
    clf = ulmfit_classifier_learner(clf_dls_factory(fitted_lm.dls.vocab), config=tiny_config, encoder=fitted_lm)
    probs, y = clf.get_preds()
    assert torch.equal(y, clf.dls.valid.labels)  # input order, although batches run longest first
    assert clf.dls.valid.get_idxs() != list(range(clf.dls.valid.n))


def test_ensemble_is_the_mean_and_keeps_order(fitted_lm, clf_dls_factory, tiny_config, task):
    vocab = fitted_lm.dls.vocab
    fwd = ulmfit_classifier_learner(clf_dls_factory(vocab), config=tiny_config, encoder=fitted_lm)
    bwd = ulmfit_classifier_learner(clf_dls_factory(vocab, backwards=True), config=tiny_config)
    with fwd.no_bar(), fwd.no_logging(), bwd.no_bar(), bwd.no_logging():
        fwd.fit(1, 1e-2)
        bwd.fit(1, 1e-2)
    ens = ForwardBackwardEnsemble(fwd, bwd)
    probs, y = ens.get_preds()
    pf, _ = fwd.get_preds()
    pb, _ = bwd.get_preds()
    torch.testing.assert_close(probs, (pf + pb) / 2, atol=1e-6, rtol=0)
    assert ens.accuracy() == pytest.approx(float((probs.argmax(1) == y).float().mean()))
    texts = task[1].text[:12].tolist()
    p_texts, _ = ens.get_preds(texts)
    rev = ens.get_preds(texts[::-1])[0]
    torch.testing.assert_close(p_texts, rev.flip(0), atol=1e-6, rtol=0)  # order follows the input
    torch.testing.assert_close(p_texts, (predict_proba(fwd, texts) + predict_proba(bwd, texts)) / 2)
    label, p = ens.predict(texts[3])
    assert label == ens.classes[int(p_texts[3].argmax())]
    torch.testing.assert_close(p, p_texts[3], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="forward learner first"):
        ForwardBackwardEnsemble(bwd, fwd)


def test_end_to_end_from_scratch_beats_majority(task):
    """LM fine-tuning then the classifier with STLR + discriminative lrs + gradual unfreezing, random start."""
    train, test = task
    torch.manual_seed(0)
    trn, tst = Corpus.from_texts(train.text, train.label), Corpus.from_texts(test.text, test.label)
    lm = lm_dataloaders(trn, tst, bs=32, bptt=20, seed=0)
    cfg = AWDLSTMConfig(emb_sz=64, n_hid=128, n_layers=2)
    lm_learn = ulmfit_lm_learner(lm, config=cfg)
    with lm_learn.no_bar(), lm_learn.no_logging():
        lm_learn.fit(2, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR()])
    dls = classifier_dataloaders(trn, tst, vocab=lm.vocab, bs=32)
    clf = ulmfit_classifier_learner(dls, config=cfg, encoder=lm_learn)
    with clf.no_bar(), clf.no_logging():
        clf.fit(5, cbs=[SlantedTriangularLR(3e-2), DiscriminativeLR(), GradualUnfreezing([1, 2])])
    acc = float(clf.validate()[1])
    majority = test.label.value_counts(normalize=True).max()
    assert acc > majority + 0.3, f"accuracy {acc:.3f} vs majority {majority:.3f}"


def test_a_100k_token_document_trains_and_predicts():
    """Memory stays bounded: only the last max_len tokens keep a graph."""
    enc = _encoder(bptt=70, max_len=280, vocab=40)
    from ulmfit_callbacks import PoolingClassifierHead, ULMFiTClassifier
    model = ULMFiTClassifier(enc, PoolingClassifierHead(18, 3, hidden=8)).train()
    x = torch.randint(2, 40, (2, 100_000))
    model(x).sum().backward()
    assert enc.module.embedding.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_classifier_crash_and_resume_with_every_callback(fitted_lm, clf_dls_factory, tiny_config, tmp_path):
    """STLR + discriminative lrs + gradual unfreezing + averaging: interrupted, resumed, same end."""
    from helpers import Boom, CrashAt, LRTrace

    from ulmfit_callbacks import ASGDWeightAveraging
    from ulmfit_callbacks.checkpoint import EpochCheckpoint, resume_fit
    dls = clf_dls_factory(fitted_lm.dls.vocab)

    def make():
        torch.manual_seed(0)
        dls.train.rng = np.random.default_rng(0)
        return ulmfit_classifier_learner(dls, config=tiny_config, encoder=fitted_lm)

    def cbs(trace):
        return [SlantedTriangularLR(1e-2), DiscriminativeLR(), GradualUnfreezing(), ASGDWeightAveraging(start=10),
                trace, EpochCheckpoint(tmp_path / "clf.pt")]
    ref, t_ref = make(), LRTrace()
    with ref.no_bar(), ref.no_logging():
        ref.fit(4, cbs=cbs(t_ref))
    n = len(dls.train)
    crashed, t = make(), LRTrace()
    with crashed.no_bar(), crashed.no_logging(), pytest.raises(Boom):
        crashed.fit(4, cbs=cbs(t) + [CrashAt(at=2 * n + 3)])
    t.lrs = t.lrs[: 2 * n]
    resumed = make()
    used = cbs(t)
    with resumed.no_bar(), resumed.no_logging():
        resume_fit(resumed, 4, tmp_path / "clf.pt", cbs=used)
    assert np.array(t.lrs) == pytest.approx(np.array(t_ref.lrs), rel=1e-12)
    assert used[2].epochs_done == 4 and used[3].n_averaged == 4 * n - 10
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
