"""Gradual unfreezing: trainable groups per epoch, frozen weights bit-identical, optimizer state kept."""
import pytest
import torch
from helpers import GroupProbe

from ulmfit_callbacks import GradualUnfreezing, SlantedTriangularLR, ulmfit_classifier_learner


@pytest.fixture
def clf(lm_dls, clf_dls_factory, tiny_config):
    torch.manual_seed(0)
    return ulmfit_classifier_learner(clf_dls_factory(lm_dls.vocab), config=tiny_config)


def test_one_more_group_each_epoch_with_stlr_in_one_fit(clf):
    probe = GroupProbe()
    with clf.no_bar(), clf.no_logging():
        clf.fit(6, cbs=[SlantedTriangularLR(0.01), GradualUnfreezing(), probe])
    n = len(clf.opt.param_lists)
    assert n == 5  # embedding, 3 layers, head
    expected = [[g >= n - min(e + 1, n) for g in range(n)] for e in range(6)]
    assert probe.trainable == expected
    # frozen groups bit-identical through optimizer steps (Adam with weight decay), trainable ones moved
    assert probe.changed == expected


def test_schedule_variant_and_across_several_fits(clf):
    probe = GroupProbe()
    gu = GradualUnfreezing(schedule=[1, 2, 3])  # fastai's freeze_to(-1), (-2), (-3), then unfreeze
    clf.add_cbs([gu, probe])
    with clf.no_bar(), clf.no_logging():
        for _ in range(4):
            clf.fit(1, 1e-3)
    assert [sum(t) for t in probe.trainable] == [1, 2, 3, 5]
    assert gu.epochs_done == 4
    gu.restart()
    assert gu.trainable_groups(0, 5) == 1


def test_optimizer_state_of_training_groups_is_kept(clf):
    gu = GradualUnfreezing()
    clf.add_cb(gu)
    with clf.no_bar(), clf.no_logging():
        clf.fit(1, 1e-3)
        head = clf.opt.param_lists[-1][0]
        avg_after_epoch_1 = clf.opt.state[head]["grad_avg"].clone()
        step = clf.opt.state[head]["step"]
        clf.fit(1, 1e-3)  # unfreezes one more group
    assert step > 0 and clf.opt.state[head]["step"] == 2 * step  # not reset to zero by unfreezing
    assert not torch.equal(avg_after_epoch_1, torch.zeros_like(avg_after_epoch_1))


def test_grad_mask_method_keeps_requires_grad_and_freezes(clf):
    probe = GroupProbe()
    with clf.no_bar(), clf.no_logging():
        clf.fit(2, 1e-3, cbs=[GradualUnfreezing(method="grad_mask"), probe])
    assert all(all(t) for t in probe.trainable)  # requires_grad untouched: DDP-safe
    assert probe.changed == [[False, False, False, False, True], [False, False, False, True, True]]


def test_bad_schedules(clf):
    with pytest.raises(ValueError, match=">= 1"):
        GradualUnfreezing(schedule=[0, 1])
    with pytest.raises(ValueError, match="must not decrease"):
        GradualUnfreezing(schedule=[2, 1])
    with pytest.raises(ValueError, match="more groups than the optimizer has"):
        with clf.no_bar(), clf.no_logging():
            clf.fit(1, cbs=GradualUnfreezing(schedule=[1, 9]))
    with pytest.raises(ValueError, match="method"):
        GradualUnfreezing(method="nope")
