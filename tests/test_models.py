"""Our AWD-LSTM: fastai parity, deepcopy/AveragedModel, dropout behaviour, plain tensors, memory."""
import copy
import gc
import os

import psutil
import pytest
import torch
from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, get_language_model

from ulmfit_callbacks import AWDLSTMConfig, AWDLSTMLanguageModel, from_fastai_state_dict, to_fastai_state_dict


def _pair(cfg: AWDLSTMConfig, vocab=50):
    torch.manual_seed(0)
    fcfg = dict(awd_lstm_lm_config, emb_sz=cfg.emb_sz, n_hid=cfg.n_hid, n_layers=cfg.n_layers)
    fa = get_language_model(AWD_LSTM, vocab, config=fcfg)
    ours = AWDLSTMLanguageModel(vocab, cfg)
    return fa, ours


def test_same_outputs_as_fastai_both_directions(tiny_config):
    fa, ours = _pair(tiny_config)
    ours.load_state_dict(from_fastai_state_dict(fa.state_dict()))
    fa.eval(), ours.eval()
    fa.reset(), ours.reset()
    torch.manual_seed(1)
    batches = [torch.randint(0, 50, (4, 7)) for _ in range(3)] + [torch.randint(0, 50, (2, 5)), torch.randint(0, 50, (6, 3))]
    for x in batches:  # hidden state carried, batch size shrinking and growing
        torch.testing.assert_close(ours(x)[0], fa(x)[0], atol=1e-5, rtol=0)
    # and back: our weights into a fresh fastai model, strict key match
    fa2, _ = _pair(tiny_config)
    fa2.load_state_dict(to_fastai_state_dict(ours.state_dict()), strict=True)
    fa2.eval(), ours.eval(), fa2.reset(), ours.reset()
    x = torch.randint(0, 50, (3, 11))
    torch.testing.assert_close(ours(x)[0], fa2(x)[0], atol=1e-5, rtol=0)


def test_reset_forgets_state(tiny_config):
    _, m = _pair(tiny_config)
    m.eval()
    x = torch.randint(0, 50, (2, 6))
    first = m(x)[0]
    assert not torch.allclose(m(x)[0], first)  # state carried
    m.reset()
    torch.testing.assert_close(m(x)[0], first)


def test_deepcopy_and_averaged_model(tiny_config):
    _, m = _pair(tiny_config)
    m.train()
    m(torch.randint(0, 50, (2, 4)))[0].sum().backward()  # state after a training step
    c = copy.deepcopy(m)
    for (n, a), (_, b) in zip(m.state_dict().items(), c.state_dict().items()):
        assert torch.equal(a, b), n
    avg = torch.optim.swa_utils.AveragedModel(m)
    with torch.no_grad():
        for p in c.parameters():
            p.add_(1.0)
    avg.update_parameters(m)
    avg.update_parameters(c)  # the running mean of m and c = m + 1 is m + 0.5, the tied weight included
    for (n, a), (_, b) in zip(m.named_parameters(), avg.module.named_parameters()):
        torch.testing.assert_close(b, a + 0.5, msg=n)
    assert c.decoder.decoder.weight is c.encoder.embedding.weight  # tying survives the copy


def _fresh(m, x):
    m.reset()
    return m(x)[0]


def test_weight_dropout_really_drops(tiny_config):
    _, m = _pair(tiny_config)
    x = torch.randint(0, 50, (2, 6))
    m.train()
    a = _fresh(m, x)
    b = _fresh(m, x)
    assert not torch.allclose(a, b)
    m.eval()
    c = _fresh(m, x)
    d = _fresh(m, x)
    assert torch.equal(c, d)
    # DropConnect alone (other dropouts off): outputs differ, and the raw weight gets gradients
    cfg = AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2, embed_p=0, input_p=0, hidden_p=0, output_p=0, weight_p=0.5)
    m = AWDLSTMLanguageModel(50, cfg).train()
    a = _fresh(m, x)
    b = _fresh(m, x)
    assert not torch.allclose(a, b)
    (a.sum() + b.sum()).backward()
    for layer in m.encoder.layers:
        assert layer.weight_hh.grad is not None and layer.weight_hh.grad.abs().sum() > 0
        # with p=0.5 about half the entries are dropped in each pass; some entries got no gradient in both
        assert (layer.weight_hh.grad == 0).any()


def test_lstm_weights_in_cudnns_flat_layout(tiny_config, monkeypatch):
    """Where cuDNN runs the LSTM, its four weights (W_hh after DropConnect) go in as views of one
    contiguous buffer in cuDNN's order; values, outputs and gradients are those of separate weights."""
    from ulmfit_callbacks.models.awd_lstm import cudnn_flat_weights
    torch.manual_seed(0)
    ws = [torch.randn(8, 3, requires_grad=True), torch.randn(8, 2).t().t(), torch.randn(8), torch.randn(8)]
    flat = cudnn_flat_weights(tuple(ws))
    base = flat[0].untyped_storage().data_ptr()
    offsets = [(v.data_ptr() - base) // v.element_size() for v in flat]
    assert offsets == [0, 24, 40, 48] and all(v.is_contiguous() for v in flat)
    assert all(torch.equal(v, w) for v, w in zip(flat, ws))
    flat[0].sum().backward()
    assert torch.equal(ws[0].grad, torch.ones(8, 3))

    lstm, buffers = torch._VF.lstm, []

    def spy(x, state, weights, *args):
        buffers.append(len({w.untyped_storage().data_ptr() for w in weights}))
        return lstm(x, state, weights, *args)
    monkeypatch.setattr(torch._VF, "lstm", spy, raising=False)

    def run(cudnn: bool):
        monkeypatch.setattr(torch.backends.cudnn, "is_acceptable", lambda x: cudnn)
        torch.manual_seed(1)
        m = AWDLSTMLanguageModel(50, tiny_config).train()
        torch.manual_seed(2)
        out = m(torch.randint(0, 50, (3, 7)))[0]
        out.sum().backward()
        return out, [p.grad for p in m.parameters()]
    (a, ga), (b, gb) = run(True), run(False)
    assert buffers == [1] * tiny_config.n_layers + [4] * tiny_config.n_layers  # one buffer where cuDNN runs
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb))


def test_plain_tensors_inside(tiny_config):
    from fastai.text.data import TensorText
    _, m = _pair(tiny_config)
    m.eval()
    logits, raw, dropped = m(TensorText(torch.randint(0, 50, (2, 5))))
    assert type(logits) is torch.Tensor and type(raw) is torch.Tensor
    assert all(type(h) is torch.Tensor for hc in m.encoder.hidden for h in hc)


def test_config_checks():
    with pytest.raises(ValueError, match="unknown AWDLSTMConfig keys"):
        AWDLSTMConfig.from_dict({"emb_sz": 8, "n_hidden": 3})
    with pytest.raises(ValueError, match="weight_p"):
        AWDLSTMConfig(weight_p=1.5)
    assert AWDLSTMConfig().scaled(0.5).weight_p == pytest.approx(0.1)
    assert AWDLSTMConfig.from_dict(AWDLSTMConfig().to_dict()) == AWDLSTMConfig()


def test_memory_flat_while_training(lm_dls):
    """A few hundred training batches through Learner.fit: resident memory stops growing."""
    from ulmfit_callbacks import ulmfit_lm_learner
    learn = ulmfit_lm_learner(lm_dls, config=AWDLSTMConfig(emb_sz=32, n_hid=64, n_layers=2))
    proc = psutil.Process(os.getpid())
    rss = []

    from fastai.callback.core import Callback

    class Probe(Callback):
        def after_batch(self):
            if self.training and self.iter % 25 == 0:
                gc.collect()
                rss.append(proc.memory_info().rss)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-3, cbs=Probe())
    n = 2 * len(lm_dls.train)
    assert n >= 300
    later = rss[len(rss) // 3:]
    growth_per_batch = (later[-1] - later[0]) / ((len(later) - 1) * 25)
    assert growth_per_batch < 20_000, f"RSS grows {growth_per_batch / 1e3:.1f} kB per batch"
