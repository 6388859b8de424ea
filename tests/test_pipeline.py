"""The three stages as functions: dropout multipliers per stage, the stage-1 vocabulary kept, artifacts."""
import dataclasses
import json

import pytest

from ulmfit_callbacks import ASGDWeightAveraging, AWDLSTMConfig, Corpus
from ulmfit_callbacks.ensemble import predict_proba
from ulmfit_callbacks.pipeline import Recipe, finetune_lm, load_artifact, load_classifier, pretrain_lm, train_classifier


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, task_corpus):
    out = tmp_path_factory.mktemp("stage1")
    general = Corpus([t + ["zyzzyva", "zyzzyva"] for t in task_corpus[0].tokens[300:]])  # a token the task text never has
    pretrain_lm(general, task_corpus[1], out, AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2), Recipe(epochs=1, drop_mult=0.5),
                bs=4, bptt=8, seed=0)
    return out


def test_stage_dropouts_follow_each_recipe(stage1):
    meta, _, _ = load_artifact(stage1)
    assert meta["config"]["weight_p"] == pytest.approx(0.2 * 0.5)  # stage 1 trained with drop_mult 0.5


def test_finetuning_keeps_the_stage1_vocabulary_and_uses_its_own_dropouts(stage1, task_corpus, tmp_path):
    task = (task_corpus[0][:300], task_corpus[1])
    _, s1_vocab, _ = load_artifact(stage1)
    assert "zyzzyva" in s1_vocab.stoi
    learn, _ = finetune_lm(*task, tmp_path / "lm", Recipe(epochs=1, drop_mult=0.3), pretrained=stage1, bs=4,
                           bptt=8, seed=0, keep_pretrained_vocab=True)
    vocab = learn.dls.vocab
    assert "zyzzyva" in vocab.stoi and vocab.stoi["zyzzyva"] >= len(vocab) - len(s1_vocab)
    cfg = learn.model.config
    assert (cfg.emb_sz, cfg.n_hid, cfg.n_layers) == (8, 16, 2)
    assert cfg.weight_p == pytest.approx(0.2 * 0.3) and cfg.input_p == pytest.approx(0.25 * 0.3)
    plain, _ = finetune_lm(*task, tmp_path / "lm2", Recipe(epochs=1), pretrained=stage1, bs=4, bptt=8, seed=0)
    assert "zyzzyva" not in plain.dls.vocab.stoi and len(plain.dls.vocab) < len(vocab)
    # the classifier reads the extended vocabulary; its own drop_mult scales the classifier dropouts
    valid = task_corpus[0][300:400]
    clf, m = train_classifier(task[0], valid, tmp_path / "clf",
                              Recipe(epochs=2, drop_mult=0.5, asgd=True, asgd_start_epoch=1, unfreeze_schedule=[1, 3]),
                              lm=tmp_path / "lm", seed=0)
    assert clf.dls.vocab == vocab
    assert clf.model.encoder.module.config.weight_p == pytest.approx(0.5 * 0.5)
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["kind"] == "classifier"
    # the reported accuracy is the saved model's on the validation texts, recomputed from its predictions
    saved = load_classifier(tmp_path / "clf")
    pred = predict_proba(saved, valid).argmax(1).tolist()
    assert m["accuracy"] == pytest.approx(sum(saved.dls.classes[i] == y for i, y in zip(pred, valid.labels)) / len(valid))


def test_recipe_builds_the_asked_callbacks():
    cbs = Recipe(asgd=True, asgd_start_epoch=3).callbacks(classifier=True)
    avg = next(c for c in cbs if isinstance(c, ASGDWeightAveraging))
    assert avg.start_epoch == 3
    names = [type(c).__name__ for c in dataclasses.replace(Recipe(), stlr=False, discriminative=False).callbacks(True)]
    assert names == ["GradualUnfreezing"]


def test_few_labels_get_their_own_recipe():
    from ulmfit_callbacks.pipeline import DEFAULT_CLASSIFIER, FEW_LABELS_CLASSIFIER, classifier_recipe
    recipe, bs, why = classifier_recipe(120)
    assert recipe == FEW_LABELS_CLASSIFIER and bs == 16 and "few-label" in why
    assert recipe.epochs * -(-120 // bs) >= 200 and not recipe.gradual_unfreezing  # enough steps, every layer trains
    assert classifier_recipe(1000)[0] == FEW_LABELS_CLASSIFIER  # measured better up to 1,000 (RESULTS.md)
    assert classifier_recipe(1001)[:2] == classifier_recipe(5000)[:2] == (DEFAULT_CLASSIFIER, 32)


def test_token_coverage_warns_on_text_the_pretrained_lm_cannot_read(capsys):
    from ulmfit_callbacks.pipeline import _token_coverage
    itos = ["xxunk", "xxbos", "the", "match", "was", "won", "."]
    assert _token_coverage(Corpus.from_texts(["The match was won.", "the match was lost"]), itos) == pytest.approx(8 / 9)
    assert "low" not in capsys.readouterr().out
    assert _token_coverage(Corpus.from_texts(["比赛赢了。", "这场比赛", "the match"]), itos) == pytest.approx(2 / 5)
    assert "low. Is the text in the language the LM was trained on?" in capsys.readouterr().out
