"""ASGD / NT-ASGD averaging: exact mean of iterates, trigger, bit-exact swaps, interruption, resume, BN."""
import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from helpers import Boom, CrashAt

from ulmfit_callbacks import ASGDWeightAveraging, ulmfit_classifier_learner, ulmfit_lm_learner
from ulmfit_callbacks.averaging import WeightAverager, nt_asgd_trigger
from ulmfit_callbacks.checkpoint import EpochCheckpoint, resume_fit


class IterateRecorder(Callback):
    """Records the weights after every optimizer step, independently of the averaging callback."""
    order = 100

    def __init__(self):
        self.iterates = []

    def after_step(self):
        self.iterates.append({n: p.detach().clone() for n, p in self.model.named_parameters()})


def _mean(iterates, start):
    keys = iterates[0].keys()
    return {k: torch.stack([it[k] for it in iterates[start:]]).mean(0) for k in keys}


def test_average_is_the_mean_of_the_iterates(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    rec, start = IterateRecorder(), 7
    asgd = ASGDWeightAveraging(start=start)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-3, cbs=[asgd, rec])
    expected = _mean(rec.iterates, start)
    assert asgd.n_averaged == len(rec.iterates) - start
    for n, p in learn.model.named_parameters():  # the model ends with the averaged weights
        torch.testing.assert_close(p, expected[n], atol=1e-6, rtol=1e-5)


def test_start_epoch_and_keep_raw(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    rec = IterateRecorder()
    asgd = ASGDWeightAveraging(start_epoch=1, keep_raw=True)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-3, cbs=[asgd, rec])
    for n, p in learn.model.named_parameters():
        assert torch.equal(p, rec.iterates[-1][n])  # raw weights kept
    expected = _mean(rec.iterates, len(lm_dls.train))
    avg_sd = asgd.averaged_state_dict()
    for n in expected:
        torch.testing.assert_close(avg_sd[n], expected[n], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("losses, nonmono, fires_at", [
    ([5, 4, 3, 2, 1, 0.5, 0.4, 0.3], 5, None),     # monotone: never
    ([5, 4, 3, 2, 1, 0.5, 3.5], 5, None),          # check 6: 3.5 is not worse than min(v_0) = 5
    ([5, 4, 3, 2, 1, 0.5, 2.0, 4.5, 6], 5, 7),     # check 7: 4.5 > min(v_0, v_1) = 4
    ([3, 2, 3.5], 1, 2),                           # check 2: 3.5 > min(v_0) = 3
    ([3, 2, 2.5], 1, None),                        # check 2: 2.5 < 3
    ([1, 9, 9, 9, 9, 9, 9], 5, 6),                 # t must exceed n: checks 1..5 cannot fire
])
def test_nt_trigger_on_scripted_losses(losses, nonmono, fires_at):
    """Algorithm 1 of Merity et al.: at check t, trigger when t > n and v_t > min(v_0 .. v_{t-n-1})."""
    fired = next((t for t in range(len(losses)) if nt_asgd_trigger(losses[: t + 1], nonmono)), None)
    assert fired == fires_at


def test_the_callback_starts_averaging_after_the_check_that_fires(lm_dls, tiny_config):
    scripted = [3.0, 2.0, 3.5, 1.0]  # validation losses per epoch: check 2 fires (3.5 > min(v_0) = 3)

    class ScriptedValidLoss(Callback):
        order = 50  # before the averaging callback (55) reads the loss

        def after_batch(self):
            if not self.training:
                self.learn.loss = torch.tensor(scripted[self.epoch])
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    asgd = ASGDWeightAveraging(nonmono=1)
    with learn.no_bar(), learn.no_logging():
        learn.fit(4, 1e-3, cbs=[asgd, ScriptedValidLoss()])
    assert asgd.val_history == pytest.approx(scripted)
    assert asgd.start_iter == 3 * len(lm_dls.train)  # from the step after check 2 on
    assert asgd.n_averaged == len(lm_dls.train)


def test_averager_is_a_running_mean_and_swaps_back_bit_exactly():
    a = WeightAverager()
    xs = [torch.randn(3, 2) for _ in range(5)]
    p = {"w": torch.nn.Parameter(xs[0].clone())}
    for x in xs:
        p["w"].data.copy_(x)
        a.update(p)
    torch.testing.assert_close(a.avg["w"], torch.stack(xs).mean(0))
    raw = p["w"].detach().clone()
    a.swap(p)
    torch.testing.assert_close(p["w"].detach(), torch.stack(xs).mean(0))
    a.swap(p)
    assert torch.equal(p["w"], raw) and not a.swapped
    half = {"w": torch.nn.Parameter(raw.to(torch.bfloat16))}  # another dtype: copied, not exchanged
    a.swap(half)
    a.swap(half)
    assert torch.equal(half["w"], raw.to(torch.bfloat16))


def test_validation_sees_averaged_weights_and_swap_is_bit_exact(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    asgd = ASGDWeightAveraging(start=3, keep_raw=True)
    rec = IterateRecorder()

    class Check(Callback):
        order = 100

        def before_validate(self):
            self.raw_expected = {n: t.clone() for n, t in asgd.avg.items()}  # swapped: avg holds the raw now
            expected = _mean(rec.iterates, 3)  # independent of the callback: the mean of the recorded iterates
            for n, p in self.model.named_parameters():
                torch.testing.assert_close(p, expected[n], atol=1e-6, rtol=1e-5)
                assert not torch.equal(p, rec.iterates[-1][n]), n  # not the raw weights

        def after_epoch(self):
            for n, p in self.model.named_parameters():
                assert torch.equal(p, self.raw_expected[n]), n  # raw weights back, bit for bit
                assert torch.equal(p, rec.iterates[-1][n]), n  # ... the last training iterate, recorded independently
            self.ok = True
    chk = Check()
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-3, cbs=[asgd, rec, chk])
    assert chk.ok


def test_interrupted_during_validation_leaves_raw_weights(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    rec = IterateRecorder()
    asgd = ASGDWeightAveraging(start=2)
    with learn.no_bar(), learn.no_logging(), pytest.raises(Boom):
        learn.fit(2, 1e-3, cbs=[asgd, rec, CrashAt(in_validation_epoch=0)])
    assert asgd.n_averaged > 0 and asgd.averager.swapped  # fastai has no event for the exception

    class FirstWeights(Callback):
        order = 100  # after the averaging callback's before_fit

        def before_fit(self):
            self.w = {n: p.detach().clone() for n, p in self.model.named_parameters()}
    first = FirstWeights()
    with learn.no_bar(), learn.no_logging():  # the next fit puts the raw weights back before training
        learn.fit(1, 1e-3, cbs=[asgd, first])
    for n, w in first.w.items():
        assert torch.equal(w, rec.iterates[-1][n])  # the last training iterate, not the average
    with learn.no_bar(), learn.no_logging(), pytest.raises(Boom):
        learn.fit(2, 1e-3, cbs=[asgd, rec, CrashAt(in_validation_epoch=0)])
    asgd.swap_out()  # or by hand
    for n, p in learn.model.named_parameters():
        assert torch.equal(p, rec.iterates[-1][n])


def test_resume_equivalence(lm_dls, tiny_config, tmp_path):
    def run(crash_at=None):
        torch.manual_seed(0)
        lm_dls.train.rng = np.random.default_rng(0)
        learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
        mk = lambda: [ASGDWeightAveraging(nonmono=1), EpochCheckpoint(tmp_path / "ck.pt")]  # noqa: E731
        with learn.no_bar(), learn.no_logging():
            if crash_at is None:
                cbs = mk()
                learn.fit(4, 3e-3, cbs=cbs)
                return learn, cbs[0]
            with pytest.raises(Boom):
                learn.fit(4, 3e-3, cbs=mk() + [CrashAt(at=crash_at)])
            fresh = ulmfit_lm_learner(lm_dls, config=tiny_config)
            cbs = mk()
            with fresh.no_bar(), fresh.no_logging():
                resume_fit(fresh, 4, tmp_path / "ck.pt", cbs=cbs, lr=3e-3)
            return fresh, cbs[0]
    ref, a = run()
    n = len(lm_dls.train)
    res, b = run(crash_at=2 * n + 5)
    assert a.val_history == pytest.approx(b.val_history, rel=1e-6)
    assert a.start_iter == b.start_iter and a.n_averaged == b.n_averaged
    for (k, x), y in zip(ref.model.state_dict().items(), res.model.state_dict().values()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=k)


def test_state_dict_loads_weights_only(tmp_path, lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    asgd = ASGDWeightAveraging(start=0)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3, cbs=asgd)
    torch.save(asgd.state_dict(), tmp_path / "s.pt")
    sd = torch.load(tmp_path / "s.pt", weights_only=True)
    assert set(sd["avg"]) == set(n for n, _ in learn.model.named_parameters()) and sd["n_averaged"] == len(lm_dls.train)


def test_batchnorm_statistics_recomputed_for_averaged_weights(lm_dls, clf_dls_factory, tiny_config):
    torch.manual_seed(0)
    clf = ulmfit_classifier_learner(clf_dls_factory(lm_dls.vocab), config=tiny_config)
    asgd = ASGDWeightAveraging(start=0)

    class SeedBeforeASGD(Callback):  # the same dropout masks in the callback's pass and in ours below
        order = asgd.order - 1

        def after_fit(self):
            torch.manual_seed(123)
    clf.add_cbs([asgd, SeedBeforeASGD()])
    with clf.no_bar(), clf.no_logging():
        clf.fit(1, 1e-3)
    bn = clf.model.head[0]
    stats_at_end_of_fit = bn.running_mean.clone()
    torch.manual_seed(123)  # the recomputation runs in train mode (dropout on), as update_bn does
    asgd._update_bn()  # the callback's pass: update_bn over its training loader
    recomputed = bn.running_mean.clone()
    assert not torch.equal(stats_at_end_of_fit, torch.zeros_like(stats_at_end_of_fit))
    feats = []
    h = clf.model.head[0].register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    clf.model.train()
    torch.manual_seed(123)
    with torch.no_grad():
        for x, _ in clf.dls.train.new(shuffle=False):
            clf.model(x)
    h.remove()
    batch_means = torch.stack([f.mean(0) for f in feats])  # momentum=None: every batch counts once
    torch.testing.assert_close(recomputed, batch_means.mean(0), atol=1e-6, rtol=1e-5)
    # the statistics left at the end of fit are the callback's own pass over the averaged weights
    assert torch.equal(stats_at_end_of_fit, recomputed)


def test_bad_arguments():
    with pytest.raises(ValueError, match="nonmono"):
        ASGDWeightAveraging(nonmono=0)
    with pytest.raises(ValueError, match="not both"):
        ASGDWeightAveraging(start=1, start_epoch=1)
