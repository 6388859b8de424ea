"""bf16 autocast on CPU with every callback: trains, averages stay fp32, AR/TAR in fp32, no leak."""
import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from helpers import GroupProbe

from ulmfit_callbacks import (
    ActivationRegularizer,
    ASGDWeightAveraging,
    BF16Autocast,
    DiscriminativeLR,
    GradualUnfreezing,
    SlantedTriangularLR,
    ulmfit_classifier_learner,
    ulmfit_lm_learner,
)


class DtypeProbe(Callback):
    order = 100

    def after_pred(self):
        # the fused LM loss gets the decoder's input (bf16 under autocast) instead of logits
        if self.training:
            self.pred_dtype = self.pred.dtype if isinstance(self.pred, torch.Tensor) else ("fused", self.pred.hidden.dtype)
        else:
            self.valid_pred_dtype = self.pred.dtype
        self.autocast_in_pred = torch.is_autocast_enabled("cpu")

    def after_loss(self):
        self.loss_dtype = self.loss_grad.dtype


def test_lm_under_bf16_with_every_callback(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    probe, asgd = DtypeProbe(), ASGDWeightAveraging(start=5)
    reg = next(cb for cb in learn.cbs if isinstance(cb, ActivationRegularizer))
    seen = {}
    orig = reg.after_loss

    def spy():
        seen["out"] = reg.out.dtype if reg.out is not None else None
        orig()
    reg.after_loss = spy
    before = learn.validate()[0]
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, cbs=[BF16Autocast(), SlantedTriangularLR(1e-2), DiscriminativeLR(), asgd, probe])
    losses = [v[0] for v in learn.recorder.values]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert learn.recorder.values[-1][1] < before  # it learned
    assert probe.pred_dtype == ("fused", torch.bfloat16) and probe.loss_dtype == torch.float32
    assert probe.valid_pred_dtype == torch.float32  # validation: logits, cast back to fp32
    assert not probe.autocast_in_pred  # autocast closed right after the forward
    assert seen["out"] == torch.float32  # AR/TAR computed on fp32 activations
    assert all(v.dtype == torch.float32 for v in asgd.avg.values())
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    assert not torch.is_autocast_enabled("cpu")


def test_bf16_really_changes_the_forward(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    learn.model.eval()
    x = next(iter(lm_dls.valid))[0]
    learn.model.reset()
    fp32 = learn.model(x)[0]
    cb = BF16Autocast()
    cb.learn = learn
    cb.before_fit()
    learn.model.reset()
    bf = learn.model(x)[0]
    cb.after_fit()
    assert bf.dtype == torch.float32 and not torch.equal(bf, fp32)
    torch.testing.assert_close(bf, fp32, atol=0.05, rtol=0.05)


def test_exception_in_forward_does_not_leak_autocast(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    cb = BF16Autocast()
    cb.learn = learn
    cb.before_fit()
    with pytest.raises(ValueError):
        learn.model(torch.zeros(3, dtype=torch.long))  # wrong shape: the encoder raises
    assert not torch.is_autocast_enabled("cpu")
    cb.after_fit()


def test_classifier_under_bf16_with_unfreezing(lm_dls, clf_dls_factory, tiny_config):
    torch.manual_seed(0)
    clf = ulmfit_classifier_learner(clf_dls_factory(lm_dls.vocab), config=tiny_config)
    probe, groups = DtypeProbe(), GroupProbe()
    last = [m for m in clf.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    inside = set()  # dtype of the head's output in training batches (not in ASGD's BatchNorm pass after the fit)
    hook = last.register_forward_hook(lambda m, i, o: inside.add(o.dtype) if clf.training else None)
    with clf.no_bar(), clf.no_logging():
        clf.fit(3, cbs=[BF16Autocast(), SlantedTriangularLR(1e-2), DiscriminativeLR(), GradualUnfreezing(),
                        ASGDWeightAveraging(start=2), probe, groups])
    hook.remove()
    assert torch.isfinite(torch.tensor(clf.recorder.values[-1][:2])).all()
    assert inside == {torch.bfloat16} and probe.pred_dtype == torch.float32  # bf16 inside, fp32 logits to the loss
    # groups: embedding, 3 layers, head; one more unfrozen per epoch, from the top
    assert groups.changed == [[False] * 4 + [True], [False] * 3 + [True] * 2, [False] * 2 + [True] * 3]


def test_state_carried_from_bf16_into_fp32_forward(tiny_config):
    from ulmfit_callbacks import AWDLSTMLanguageModel
    m = AWDLSTMLanguageModel(50, tiny_config).train()
    x = torch.randint(0, 50, (4, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)
    assert all(h.dtype == torch.float32 for hc in m.encoder.hidden for h in hc)
    assert m(x)[0].dtype == torch.float32  # an fp32 step right after a bf16 one


@pytest.fixture
def cpu_amp(monkeypatch):
    """fastai's MixedPrecision on the CPU: its autocast and GradScaler are hard-wired to 'cuda' (no-ops
    here); point them at the CPU. oneDNN has no fp16 LSTM on most CPUs, so its LSTM is turned off."""
    import fastai.callback.fp16 as fp16
    monkeypatch.setattr(fp16, "autocast", lambda device_type, **kw: torch.autocast("cpu", **kw))
    monkeypatch.setattr(fp16, "GradScaler", lambda device, **kw: torch.amp.GradScaler("cpu", **kw))
    with torch.backends.mkldnn.flags(enabled=False):
        yield


def test_lm_under_fastais_mixed_precision(lm_dls, tiny_config, cpu_amp):
    """fp16 autocast + loss scaling (2**16) with the fused loss: one SGD step lands where an fp32 step
    does, up to fp16 rounding in the LSTM (an unscaled or doubly scaled gradient would miss by 100%)."""
    from fastai.callback.core import CancelFitException
    from fastai.callback.fp16 import MixedPrecision
    from fastai.optimizer import SGD

    class OneStep(Callback):
        order = 100

        def after_step(self):
            self.learn.scales_seen = list(self.learn.mixed_precision.scales) if hasattr(self.learn, "mixed_precision") else []
            raise CancelFitException()

    def one_step(cbs):
        torch.manual_seed(0)
        lm_dls.train.rng = np.random.default_rng(0)
        learn = ulmfit_lm_learner(lm_dls, config=tiny_config, opt_func=SGD)
        init = {k: v.detach().clone() for k, v in learn.model.named_parameters()}
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 0.5, cbs=cbs + [OneStep()])
        return learn, init
    probe = DtypeProbe()
    amp, _ = one_step([MixedPrecision(), probe])
    assert amp.scales_seen == [2.0 ** 16] and probe.pred_dtype[0] == "fused" and probe.loss_dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in amp.model.parameters())
    ref, init = one_step([])
    for (k, a), b in zip(amp.model.named_parameters(), ref.model.parameters()):
        assert (a - b).norm() <= 0.01 * (b - init[k]).norm(), k


def test_bf16_autocast_refuses_mixed_precision(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config).to_fp16()
    with pytest.raises(ValueError, match="BF16Autocast and fastai's MixedPrecision"):
        learn.fit(1, cbs=BF16Autocast())
    assert not torch.is_autocast_enabled("cpu")
