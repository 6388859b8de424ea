"""Model folders: safetensors round trip, tied weights once, fp16 export, legacy folders, names and hub ids."""
import json

import pytest
import torch

from ulmfit_callbacks import AWDLSTMConfig, AWDLSTMLanguageModel, lm_dataloaders, ulmfit_lm_learner
from ulmfit_callbacks.artifact import atomic_write, read_model_folder, resolve_model, save_model_folder, shipped_model_path
from ulmfit_callbacks.cli import main as cli_main


def _lm_folder(tmp_path, vocab, backwards=False, cfg=AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2)):
    torch.manual_seed(0)
    m = AWDLSTMLanguageModel(len(vocab), cfg)
    meta = dict(kind="lm", config=cfg.to_dict(), backwards=backwards, classes=None, multi_label=False)
    return save_model_folder(tmp_path / ("bwd" if backwards else "fwd"), m.state_dict(), meta, vocab.itos), m


def test_round_trip_is_exact_and_tied_weights_are_stored_once(tmp_path, lm_dls):
    folder, m = _lm_folder(tmp_path, lm_dls.vocab)
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "vocab.json", "README.md"}
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert "decoder.decoder.weight" not in f.keys()  # tied to the embedding: one copy on disk
    meta, itos, state = read_model_folder(folder)
    assert itos == lm_dls.vocab.itos and meta["kind"] == "lm" and meta["vocab_sz"] == len(itos)
    for k, v in m.state_dict().items():
        assert torch.equal(state[k], v), k
    assert "# ULMFiT language model, forward" in (folder / "README.md").read_text()


def test_fp16_export_halves_the_file_and_loads_as_fp32(tmp_path, lm_dls):
    folder, m = _lm_folder(tmp_path, lm_dls.vocab)
    cli_main(["export", str(folder), str(tmp_path / "half"), "--half"])
    full, half = (folder / "model.safetensors").stat().st_size, (tmp_path / "half" / "model.safetensors").stat().st_size
    assert half < 0.6 * full
    _, _, state = read_model_folder(tmp_path / "half")
    w = m.state_dict()["encoder.embedding.weight"]
    assert state["encoder.embedding.weight"].dtype == torch.float32
    assert torch.equal(state["encoder.embedding.weight"], w.half().float())


def test_legacy_weights_pt_folders_still_load(tmp_path, lm_dls):
    folder, m = _lm_folder(tmp_path, lm_dls.vocab)
    (folder / "model.safetensors").unlink()
    torch.save(m.state_dict(), folder / "weights.pt")
    _, _, state = read_model_folder(folder)
    assert torch.equal(state["encoder.layers.0.weight_hh"], m.state_dict()["encoder.layers.0.weight_hh"])
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        (folder / "weights.pt").unlink()
        read_model_folder(folder)


def test_pretrained_takes_a_folder_a_parent_with_both_directions_and_a_hub_id(tmp_path, lm_dls, monkeypatch):
    fwd, m = _lm_folder(tmp_path, lm_dls.vocab)
    _lm_folder(tmp_path, lm_dls.vocab, backwards=True)
    assert resolve_model(tmp_path, backwards=True) == tmp_path / "bwd"
    assert resolve_model(str(fwd)) == fwd and resolve_model("none") is None and resolve_model(None) is None
    learn = ulmfit_lm_learner(lm_dls, pretrained=tmp_path)  # sizes taken from the folder
    assert learn.model.config.emb_sz == 8 and learn.pretrained_report.matched == len(lm_dls.vocab)
    assert torch.equal(learn.model.encoder.layers[1].weight_ih, m.encoder.layers[1].weight_ih)
    calls = []

    def fake_download(repo_id, **kw):  # a hub repository in the same layout; nothing is downloaded
        calls.append(repo_id)
        return str(tmp_path)
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    learn = ulmfit_lm_learner(lm_dls, pretrained="someone/ulmfit-general")
    assert calls == ["someone/ulmfit-general"] and learn.pretrained_report.source == str(tmp_path / "fwd")
    with pytest.raises(ValueError, match="backward LM but the data are forward"):
        ulmfit_lm_learner(lm_dls, pretrained=tmp_path / "bwd")
    with pytest.raises(ValueError, match="do not fit this architecture"):
        ulmfit_lm_learner(lm_dls, config=AWDLSTMConfig(emb_sz=12, n_hid=16, n_layers=2), pretrained=fwd)
    with pytest.raises(FileNotFoundError, match="not a shipped model"):
        resolve_model(str(tmp_path / "nowhere"))


def test_the_shipped_lm_is_installed_with_its_card_and_loads_without_pickle(task_corpus):
    for backwards in (False, True):
        p = shipped_model_path("general", backwards)
        meta, itos, state = read_model_folder(p)
        assert meta["backwards"] is backwards and meta["kind"] == "lm" and not (p / "weights.pt").exists()
        assert len(itos) == state["encoder.embedding.weight"].shape[0]
    card = (shipped_model_path("general").parent / "MODEL_CARD.md").read_text()
    for words in ("perplexity", "ulmfit pretrain", "Brown", "tokens", "Intended use"):
        assert words in card
    size = sum(f.stat().st_size for d in ("general-fwd", "general-bwd")
               for f in (shipped_model_path("general").parent / d).iterdir())
    assert size < 40 * 2**20
    dls = lm_dataloaders(*task_corpus, bs=4, bptt=10)
    learn = ulmfit_lm_learner(dls, pretrained="general")
    assert learn.pretrained_report.matched > 0.8 * len(dls.vocab)  # news text: most tokens are known (86%)
    acc = learn.validate()[1]  # [valid_loss, accuracy, perplexity]
    rand = ulmfit_lm_learner(dls, config=learn.model.config).validate()[1]  # same sizes, random weights
    assert acc > 0.15 and acc > rand + 0.1  # next-token accuracy of a pretrained LM, not of a random one


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    atomic_write(tmp_path / "a.json", json.dumps({"v": 1}))

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.json", boom)
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
