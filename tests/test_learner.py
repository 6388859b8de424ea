"""LM learner on real text; determinism."""
import torch

from ulmfit_callbacks import AWDLSTMConfig, DiscriminativeLR, SlantedTriangularLR, lm_dataloaders, ulmfit_lm_learner


def test_short_lm_fit_on_real_text_lowers_validation_loss(general_texts):
    train, valid = general_texts
    torch.manual_seed(0)
    dls = lm_dataloaders(train, valid, bs=16, bptt=35, max_vocab=5000, seed=0)
    learn = ulmfit_lm_learner(dls, config=AWDLSTMConfig(emb_sz=48, n_hid=96, n_layers=2))
    before = learn.validate()[0]
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR()])
    losses = [v[1] for v in learn.recorder.values]
    assert losses[1] < losses[0] < before
    assert learn.recorder.values[-1][3] < 0.6 * torch.exp(torch.tensor(before))  # perplexity well down


def test_same_seed_same_weights(lm_dls, tiny_config):
    def run():
        torch.manual_seed(0)
        lm_dls.train.rng = __import__("numpy").random.default_rng(0)
        learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR()])
        return learn.model.state_dict()
    a, b = run(), run()
    for k in a:
        assert torch.equal(a[k], b[k]), k
