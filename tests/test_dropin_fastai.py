"""Each callback dropped into stock fastai learners with fastai's own AWD_LSTM."""
import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.text.all import (
    AWD_LSTM,
    TextDataLoaders,
    awd_lstm_clas_config,
    awd_lstm_lm_config,
    language_model_learner,
    text_classifier_learner,
)
from helpers import LRTrace

from ulmfit_callbacks import (
    ActivationRegularizer,
    ASGDWeightAveraging,
    DiscriminativeLR,
    GradualUnfreezing,
    SlantedTriangularLR,
    stlr,
)

SMALL = dict(emb_sz=16, n_hid=32, n_layers=2)


@pytest.fixture(scope="module")
def fastai_dls(task):
    train, _ = task
    df = train.iloc[:300].reset_index(drop=True)
    lm = TextDataLoaders.from_df(df, text_col="text", is_lm=True, valid_pct=0.1, bs=8, seq_len=10, seed=0)
    clas = TextDataLoaders.from_df(df, text_col="text", label_col="label", valid_pct=0.2, bs=16, seed=0,
                                   text_vocab=lm.vocab)
    return lm, clas


def test_all_callbacks_on_language_model_learner(fastai_dls):
    lm, _ = fastai_dls
    learn = language_model_learner(lm, AWD_LSTM, config=dict(awd_lstm_lm_config, **SMALL), pretrained=False)
    trace, asgd = LRTrace(), ASGDWeightAveraging(start=5)
    raws = []

    class Iterates(Callback):
        order = 100

        def after_step(self):
            raws.append(self.model[0].rnns[0].weight_hh_l0_raw.detach().clone())
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR(), asgd, trace, Iterates()])
    lrs = np.array(trace.lrs)
    T = 2 * len(lm.train)
    assert lrs.shape == (T, 3)  # fastai's LM splitter: 2 layers, then embedding + decoder
    assert lrs[:, -1] == pytest.approx([stlr(t, T) for t in range(T)])
    assert lrs[:, :-1] == pytest.approx(lrs[:, 1:] / 2.6)
    assert asgd.n_averaged == T - 5
    raw = learn.model[0].rnns[0].weight_hh_l0_raw  # the averaged weights are in place after the fit
    torch.testing.assert_close(raw, torch.stack(raws[5:]).mean(0), atol=1e-6, rtol=1e-5)
    assert not torch.equal(raw, raws[-1])


def test_our_ar_tar_on_fastai_lm_and_one_token_batches(fastai_dls):
    lm, _ = fastai_dls
    learn = language_model_learner(lm, AWD_LSTM, config=dict(awd_lstm_lm_config, **SMALL), pretrained=False)
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ in ("RNNCallback", "RNNRegularizer")])
    reg = ActivationRegularizer(alpha=2.0, beta=1.0)
    learn.add_cb(reg)
    x = torch.randint(0, len(lm.vocab), (4, 1))  # a 1-token batch: TAR is undefined there
    learn.model.train()
    learn.model.reset()
    learn.xb, learn.yb = (x,), (x,)
    learn.training = True
    learn.pred = learn.model(x)
    reg.learn = learn
    reg.after_pred()
    assert isinstance(learn.pred, torch.Tensor)  # fastai's (decoded, raw, dropped) unpacked
    base = learn.loss_func(learn.pred, x)
    learn.loss_grad = base.clone()
    reg.after_loss()
    assert torch.isfinite(learn.loss_grad)
    ar = 2.0 * reg.out.float().pow(2).mean()
    assert ar > 0
    torch.testing.assert_close(learn.loss_grad - base, ar)  # AR added, TAR skipped (one token)


def test_all_callbacks_on_text_classifier_learner(fastai_dls):
    _, clas = fastai_dls
    learn = text_classifier_learner(clas, AWD_LSTM, config=dict(awd_lstm_clas_config, **SMALL), pretrained=False)
    trace, gu, asgd = LRTrace(), GradualUnfreezing(), ASGDWeightAveraging(start=3)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR(), gu, trace, asgd])
    n = len(learn.opt.param_lists)
    assert n == 4  # fastai's classifier splitter: embedding, 2 layers, head
    lrs = np.array(trace.lrs)
    T = 2 * len(clas.train)
    assert lrs.shape == (T, 4)
    assert lrs[:, -1] == pytest.approx([stlr(t, T) for t in range(T)])  # Eq. 3 on the head, over the whole fit
    assert lrs[:, :-1] == pytest.approx(lrs[:, 1:] / 2.6)
    assert asgd.n_averaged == T - 3
    assert gu.epochs_done == 2
    assert [p.requires_grad for p in learn.opt.param_lists[0]] == [False] * len(learn.opt.param_lists[0])
