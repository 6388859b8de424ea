"""Pretrained weights in fastai's archive layout: load, vocab remap, refusals."""
import pickle

import pytest
import torch
from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, get_language_model

from ulmfit_callbacks import AWDLSTMConfig, ulmfit_lm_learner
from ulmfit_callbacks.pretrained import load_pretrained, read_itos
from ulmfit_callbacks.vocab import SPECIAL_TOKENS


@pytest.fixture
def fastai_archive(tmp_path, tiny_config):
    """A folder laid out like fastai's wt103-fwd archive, from a small fastai model."""
    torch.manual_seed(0)
    old_itos = SPECIAL_TOKENS + ["the", "what", "is", "who", "pretrainonly"]
    cfg = dict(awd_lstm_lm_config, emb_sz=tiny_config.emb_sz, n_hid=tiny_config.n_hid, n_layers=tiny_config.n_layers)
    fa = get_language_model(AWD_LSTM, len(old_itos), config=cfg)
    with torch.no_grad():
        fa[1].decoder.bias.copy_(torch.randn(len(old_itos)))
    folder = tmp_path / "wt103-fwd"
    folder.mkdir()
    torch.save(fa.state_dict(), folder / "lstm_fwd.pth")
    (folder / "itos_wt103.pkl").write_bytes(pickle.dumps(old_itos))
    return folder, fa, old_itos


def test_load_fastai_layout_and_remap(fastai_archive, lm_dls, tiny_config, capsys):
    folder, fa, old_itos = fastai_archive
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config, pretrained=folder)
    rep = learn.pretrained_report
    vocab = lm_dls.vocab
    shared = [t for t in vocab.itos if t in old_itos]
    assert rep.matched == len(shared) and rep.total == len(vocab)
    assert "found in the pretrained vocabulary" in capsys.readouterr().out
    emb, old_emb = learn.model.encoder.embedding.weight, fa[0].encoder.weight
    bias, old_bias = learn.model.decoder.decoder.bias, fa[1].decoder.bias
    for t in shared:
        assert torch.equal(emb[vocab.stoi[t]], old_emb[old_itos.index(t)])
        assert torch.equal(bias[vocab.stoi[t]], old_bias[old_itos.index(t)])
    unseen = next(i for i, t in enumerate(vocab.itos) if t not in old_itos)
    torch.testing.assert_close(emb[unseen], old_emb.mean(0))
    torch.testing.assert_close(bias[unseen], old_bias.mean())
    assert learn.model.decoder.decoder.weight is learn.model.encoder.embedding.weight
    torch.testing.assert_close(learn.model.encoder.layers[1].weight_hh, fa[0].rnns[1].weight_hh_l0_raw)


def test_refuses_other_architecture(fastai_archive, lm_dls):
    folder, *_ = fastai_archive
    with pytest.raises(ValueError, match="do not fit this architecture"):
        ulmfit_lm_learner(lm_dls, config=AWDLSTMConfig(emb_sz=8, n_hid=24, n_layers=3), pretrained=folder)
    with pytest.raises(ValueError, match="layers: pretrained 3 vs model 2"):
        ulmfit_lm_learner(lm_dls, config=AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2), pretrained=folder)


def test_itos_pickle_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    (tmp_path / "itos.pkl").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_itos(tmp_path / "itos.pkl")


def test_weights_are_loaded_weights_only(tmp_path, tiny_config, lm_dls, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    from ulmfit_callbacks import AWDLSTMLanguageModel
    with pytest.raises(ValueError, match="refused"):
        load_pretrained(AWDLSTMLanguageModel(len(lm_dls.vocab), tiny_config), tmp_path / "evil.pth",
                        list(lm_dls.vocab.itos), lm_dls.vocab)
    assert "pwned" not in capsys.readouterr().out  # print never ran


def test_a_fastai_vocab_list_with_xxfake_padding_is_accepted(fastai_archive, tiny_config):
    """fastai pads its vocab to a multiple of 8 with repeated 'xxfake' tokens."""
    from ulmfit_callbacks import AWDLSTMLanguageModel
    folder, fa, old_itos = fastai_archive
    itos = SPECIAL_TOKENS + ["what", "zebra", "xxfake", "xxfake", "xxfake"]
    model = AWDLSTMLanguageModel(len(itos), tiny_config)
    rep = load_pretrained(model, folder / "lstm_fwd.pth", folder / "itos_wt103.pkl", itos)
    assert rep.total == len(itos) and rep.matched == len(SPECIAL_TOKENS) + 1
    emb = model.encoder.embedding.weight
    assert torch.equal(emb[itos.index("what")], fa[0].encoder.weight[old_itos.index("what")])
    torch.testing.assert_close(emb[-1], fa[0].encoder.weight.mean(0))


def test_a_fastai_save_with_optimizer_state_loads_without_running_its_code(tmp_path, lm_dls, tiny_config):
    """fastai's Learner.save(with_opt=True) pickles fastcore objects beside the weights: only tensors are read."""
    import pandas as pd
    from fastai.text.all import TextDataLoaders, language_model_learner
    df = pd.DataFrame({"text": ["the cat sat on the mat and what is who"] * 40})
    dls = TextDataLoaders.from_df(df, text_col="text", is_lm=True, valid_pct=0.1, bs=4, seq_len=4, seed=0)
    cfg = dict(awd_lstm_lm_config, emb_sz=tiny_config.emb_sz, n_hid=tiny_config.n_hid, n_layers=tiny_config.n_layers)
    fa = language_model_learner(dls, AWD_LSTM, config=cfg, pretrained=False)
    with fa.no_bar(), fa.no_logging():
        fa.fit(1, 1e-3)
    fa.path, fa.model_dir = tmp_path, "."
    fa.save("fa", with_opt=True)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "fa.pth", weights_only=True)  # what the weights-only loader alone says
    (tmp_path / "itos.pkl").write_bytes(pickle.dumps(list(dls.vocab)))
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config, pretrained=(tmp_path / "fa.pth", tmp_path / "itos.pkl"))
    i, j = lm_dls.vocab.stoi["the"], list(dls.vocab).index("the")
    assert torch.equal(learn.model.encoder.embedding.weight[i], fa.model[0].encoder.weight[j].detach())
    (tmp_path / "evil.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable weights file"):
        ulmfit_lm_learner(lm_dls, config=tiny_config, pretrained=(tmp_path / "evil.pth", tmp_path / "itos.pkl"))
