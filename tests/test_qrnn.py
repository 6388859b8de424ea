"""QRNN encoder option: the vectorised forget-mult against the sequential recurrence, state
carried across chunks, dropout, training through the same learners, splitters and callbacks."""

import pytest
import torch

from ulmfit_callbacks import (
    AWDLSTMConfig,
    AWDLSTMLanguageModel,
    BF16Autocast,
    DiscriminativeLR,
    GradualUnfreezing,
    SlantedTriangularLR,
    lm_splitter,
    to_fastai_state_dict,
    ulmfit_classifier_learner,
    ulmfit_lm_learner,
)
from ulmfit_callbacks.models.qrnn import QRNNLayer, forget_mult


def _loop(f, x, c0):
    c, out = c0, []
    for t in range(f.size(1)):
        c = f[:, t] * c + x[:, t]
        out.append(c)
    return torch.stack(out, 1)


@pytest.mark.parametrize("T", [1, 2, 7, 64, 70, 129])
def test_forget_mult_equals_the_sequential_recurrence_values_and_gradients(T):
    torch.manual_seed(T)
    f = torch.rand(3, T, 5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, T, 5, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, T, 5, dtype=torch.float64)
    fast, slow = forget_mult(f, x, c0), _loop(f, x, c0)
    assert torch.allclose(fast, slow, atol=1e-12)
    g_fast = torch.autograd.grad((fast * w).sum(), (f, x, c0))
    g_slow = torch.autograd.grad((slow * w).sum(), (f, x, c0))
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, atol=1e-10)


def test_forget_mult_is_stable_over_long_sequences():
    f = torch.full((1, 5000, 2), 0.999)
    x = torch.ones(1, 5000, 2) * 0.001
    c = forget_mult(f, x)
    assert torch.isfinite(c).all()
    assert torch.allclose(c[0, -1], torch.tensor(1 - 0.999 ** 5000).expand(2), atol=1e-4)


def _qrnn(weight_p=0.2, **dropouts):
    torch.manual_seed(0)
    return AWDLSTMLanguageModel(60, AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=3, weight_p=weight_p, arch="qrnn", **dropouts))


def test_state_is_carried_across_chunks_including_the_width_2_window():
    m = _qrnn().eval()
    assert [l.window for l in m.encoder.layers] == [2, 1, 1]
    tok = torch.randint(0, 60, (4, 23))
    whole = m(tok)[0]
    m.reset()
    parts = torch.cat([m(tok[:, i:i + 5])[0] for i in range(0, 23, 5)], 1)
    assert torch.allclose(whole, parts, atol=1e-6)
    # the first layer really looks one token back: changing token t changes the output at t+1 of layer 0
    m.reset()
    h = m.encoder.layers[0](m.encoder.embedding(tok), m.encoder._state(4, m.encoder.embedding.weight)[0])[0]
    tok2 = tok.clone()
    tok2[:, 10] = (tok2[:, 10] + 1) % 60
    h2 = m.encoder.layers[0](m.encoder.embedding(tok2), m.encoder._state(4, m.encoder.embedding.weight)[0])[0]
    assert torch.equal(h[:, :10], h2[:, :10]) and not torch.allclose(h[:, 11], h2[:, 11])


def test_dropconnect_on_the_gate_matrix_and_gradients():
    tok = torch.randint(0, 60, (2, 9))
    no_other_dropout = dict(embed_p=0.0, input_p=0.0, hidden_p=0.0, output_p=0.0)

    def two_seeds(m):
        m.train()
        out = []
        for seed in (1, 2):
            m.reset()
            torch.manual_seed(seed)
            out.append(m(tok)[0])
        return out
    a, b = two_seeds(_qrnn(weight_p=0.0, **no_other_dropout))
    assert torch.equal(a, b)  # nothing random left without DropConnect
    m = _qrnn(weight_p=0.5, **no_other_dropout)
    a, b = two_seeds(m)
    assert not torch.allclose(a, b)  # DropConnect alone changes the output
    b.sum().backward()
    for l in m.encoder.layers:  # dropped weights get no gradient in this step; the others do
        assert (l.weight.grad == 0).any() and (l.weight.grad != 0).any()
    m.eval()
    m.reset()
    e1 = m(tok)[0]
    m.reset()
    assert torch.equal(e1, m(tok)[0])


def test_bad_arch_and_fastai_conversion_are_refused():
    with pytest.raises(ValueError, match="arch must be 'lstm' or 'qrnn'"):
        AWDLSTMConfig(arch="gru")
    with pytest.raises(ValueError, match="QRNN"):
        to_fastai_state_dict(_qrnn().state_dict())
    with pytest.raises(ValueError, match="window must be 1 or 2"):
        QRNNLayer(4, 4, window=3)
    assert AWDLSTMConfig.from_dict(AWDLSTMConfig(arch="qrnn").to_dict()).arch == "qrnn"


def test_qrnn_lm_trains_with_the_ulmfit_callbacks_and_feeds_a_classifier(lm_dls, clf_dls_factory):
    cfg = AWDLSTMConfig(emb_sz=16, n_hid=32, n_layers=3, arch="qrnn")
    torch.manual_seed(0)
    learn = ulmfit_lm_learner(lm_dls, config=cfg)
    assert len(lm_splitter(learn.model)) == 4
    before = learn.validate()[0]
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR(), BF16Autocast()])
    assert learn.recorder.values[-1][1] < before
    clf = ulmfit_classifier_learner(clf_dls_factory(lm_dls.vocab), config=cfg, encoder=learn)
    assert clf.model.encoder.module.config.arch == "qrnn"
    assert clf.model.encoder.module.config.weight_p == 0.5  # the classifier's dropouts, arch kept
    first = [p.detach().clone() for p in clf.model.encoder.module.layers[0].parameters()]
    with clf.no_bar(), clf.no_logging():
        clf.fit(2, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR(), GradualUnfreezing()])
    # gradual unfreezing: epoch 1 trains the head only, epoch 2 the last QRNN layer; layer 0 untouched
    assert all(torch.equal(a, b) for a, b in zip(first, clf.model.encoder.module.layers[0].parameters()))


def test_bf16_qrnn_matches_fp32():
    m = _qrnn(weight_p=0.0).eval()
    tok = torch.randint(0, 60, (4, 70))
    ref = m(tok)[0]
    m.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(tok)[0].float()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
