"""Slanted triangular LR and discriminative LR: formula, traces through real fits, drop-in, resume."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastai.callback.core import event
from helpers import Boom, CrashAt, LRTrace, event_methods

from ulmfit_callbacks import (
    ASGDWeightAveraging,
    DiscriminativeLR,
    GradualUnfreezing,
    SlantedTriangularLR,
    discriminative_lrs,
    stlr,
    ulmfit_lm_learner,
)
from ulmfit_callbacks.checkpoint import EpochCheckpoint, resume_fit


def paper(t, T, lr_max=0.01, cut_frac=0.1, ratio=32):
    cut = math.floor(T * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return lr_max * (1 + p * (ratio - 1)) / ratio


@pytest.mark.parametrize("T", [10, 100, 1000, 5450])
def test_formula_at_every_step(T):
    cut = math.floor(T * 0.1)
    assert stlr(0, T) == pytest.approx(0.01 / 32)
    assert stlr(cut, T) == pytest.approx(0.01)
    assert stlr(T - 1, T) == pytest.approx(paper(T - 1, T))
    vals = [stlr(t, T) for t in range(T)]
    assert vals == pytest.approx([paper(t, T) for t in range(T)])
    assert np.all(np.diff(vals[: cut + 1]) > 0) and np.all(np.diff(vals[cut:]) < 0)


def test_short_and_uneven_fits_never_go_below_lr_min():
    # T not a multiple of 1/cut_frac: the paper's p would turn negative at the end
    T = 105
    assert paper(T - 1, T) < 0.01 / 32
    assert stlr(T - 1, T) == pytest.approx(0.01 / 32)
    assert min(stlr(t, 7) for t in range(7)) > 0  # cut = 0 in the paper's formula; we use 1


@pytest.mark.parametrize("kw, msg", [(dict(lr_max=0), "lr_max"), (dict(lr_max=-1e-3), "lr_max"),
                                     (dict(cut_frac=0), "cut_frac"), (dict(cut_frac=1.0), "cut_frac"),
                                     (dict(ratio=0.5), "ratio")])
def test_bad_hyperparameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SlantedTriangularLR(**kw)


def test_discriminative_ratios():
    lrs = discriminative_lrs(0.01, 4)
    assert lrs[-1] == 0.01
    assert lrs[:-1] / lrs[1:] == pytest.approx([1 / 2.6] * 3)


def test_traced_through_a_real_fit_with_variable_bptt(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    trace, sched = LRTrace(), SlantedTriangularLR(lr_max=0.01)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, cbs=[sched, DiscriminativeLR(), trace])
    T = 2 * len(lm_dls.train)
    lrs, sls = np.array(trace.lrs), np.array(trace.seq_lens)
    assert lrs.shape == (T, 4) and len(set(sls)) > 1  # variable BPTT really varied
    expected_top = np.array([stlr(t, T) for t in range(T)]) * sls / lm_dls.train.bptt
    assert lrs[:, -1] == pytest.approx(expected_top)
    for g in range(3):  # every group rescaled the same way, ratios exactly 2.6
        assert lrs[:, g] == pytest.approx(lrs[:, g + 1] / 2.6)
    assert np.array(sched.lrs) == pytest.approx(lrs)  # the callback's own record matches
    fig = sched.plot()
    assert len(fig.axes[0].lines) == 4


def test_per_group_lr_max_without_rescaling(lm_dls, tiny_config):
    lm_dls.train.variable_bptt = False
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    trace = LRTrace()
    lr_max = [1e-4, 1e-3, 2e-3, 1e-2]
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, cbs=[SlantedTriangularLR(lr_max=lr_max), trace])
    T = len(lm_dls.train)
    assert np.array(trace.lrs) == pytest.approx(np.outer([stlr(t, T, 1.0) for t in range(T)], lr_max))
    with pytest.raises(ValueError, match="4 parameter groups"):
        learn.fit(1, cbs=SlantedTriangularLR(lr_max=[1e-3, 1e-2]))


def test_discriminative_with_fit_one_cycle_and_plain_fit(lm_dls, tiny_config):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    trace = LRTrace()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-2, cbs=[DiscriminativeLR(), trace])
    lrs = np.array(trace.lrs)
    assert lrs[:, :-1] == pytest.approx(lrs[:, 1:] / 2.6)
    assert lrs[:, -1].max() == pytest.approx(1e-2, rel=1e-2) and lrs[0, -1] < 1e-3  # one-cycle shape kept
    trace2 = LRTrace()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3, cbs=[DiscriminativeLR(decay=2.0), trace2])
    assert np.array(trace2.lrs) == pytest.approx(np.tile([3e-3 / 8, 3e-3 / 4, 3e-3 / 2, 3e-3], (len(trace2.lrs), 1)))


def test_only_real_event_names():
    real = set(event.__dict__) if not hasattr(event, "_fields") else set()
    real = {e for e in dir(event) if not e.startswith("_")}
    for cls in (SlantedTriangularLR, DiscriminativeLR, GradualUnfreezing, ASGDWeightAveraging):
        for name in event_methods(cls):
            assert name in real, f"{cls.__name__}.{name} is not a fastai event"


def test_export_round_trip_in_a_fresh_process(lm_dls, tiny_config, tmp_path):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config, path=tmp_path)
    cbs = [SlantedTriangularLR(0.02, cut_frac=0.2, ratio=16), DiscriminativeLR(2.0), GradualUnfreezing([1, 3]),
           ASGDWeightAveraging(start=3, nonmono=3)]
    learn.add_cbs(cbs)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    learn.export("export.pkl")
    code = f"""
import warnings; warnings.simplefilter('ignore')
from fastai.learner import load_learner
learn = load_learner(r'{tmp_path / "export.pkl"}', cpu=True)
s = learn.slanted_triangular_lr
print(s.lr_max, s.cut_frac, s.ratio, s.t, learn.discriminative_lr.decay, learn.gradual_unfreezing.schedule,
      learn.asgd_weight_averaging.start, learn.asgd_weight_averaging.nonmono)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.02", "0.2", "16", str(len(lm_dls.train)), "2.0", "[1,", "3]", "3", "3"]


def test_crash_and_resume_continues_the_same_trajectory(lm_dls, tiny_config, tmp_path):
    """Interrupted at an arbitrary iteration, resumed from the last epoch checkpoint: same lrs, same weights."""
    def run(crash_at=None):
        torch.manual_seed(0)
        lm_dls.train.rng = np.random.default_rng(0)
        learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
        trace = LRTrace()
        cbs = lambda: [SlantedTriangularLR(0.01), DiscriminativeLR(), GradualUnfreezing(), trace,  # noqa: E731
                       EpochCheckpoint(tmp_path / "ck.pt")]
        with learn.no_bar(), learn.no_logging():
            if crash_at is None:
                used = cbs()
                learn.fit(3, cbs=used)
                return learn, trace.lrs, used
            with pytest.raises(Boom):
                learn.fit(3, cbs=cbs() + [CrashAt(at=crash_at)])
            lrs_before = list(trace.lrs)
            fresh = ulmfit_lm_learner(lm_dls, config=tiny_config)
            trace.lrs = lrs_before[: (crash_at // len(lm_dls.train)) * len(lm_dls.train)]
            used = cbs()
            with fresh.no_bar(), fresh.no_logging():
                resume_fit(fresh, 3, tmp_path / "ck.pt", cbs=used)
            return fresh, trace.lrs, used
    ref, ref_lrs, _ = run()
    n = len(lm_dls.train)
    res, res_lrs, used = run(crash_at=n + n // 2)  # in the middle of the second epoch
    assert len(res_lrs) == len(ref_lrs) == 3 * n
    assert np.array(res_lrs) == pytest.approx(np.array(ref_lrs), rel=1e-12)
    assert used[0].t == 3 * n and used[2].epochs_done == 3
    for (k, a), b in zip(ref.model.state_dict().items(), res.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
