"""The vocabulary: training rows only, fastai's special tokens first, JSON, extension by a stage-1 vocabulary."""
from ulmfit_callbacks import Corpus, Vocab, lm_dataloaders
from ulmfit_callbacks.vocab import SPECIAL_TOKENS


def test_vocab_from_training_rows_only_and_json_round_trip(tmp_path):
    train = [["xxbos", "a", "b", "a"], ["xxbos", "b", "c"]]
    valid = [["xxbos", "zzz", "zzz", "zzz"]]
    dls = lm_dataloaders(Corpus(train * 20), Corpus(valid * 20), bs=2, bptt=3, min_freq=1)
    assert "zzz" not in dls.vocab.stoi
    assert dls.vocab.itos[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert dls.vocab.itos[len(SPECIAL_TOKENS):] == ["a", "b", "c"]
    dls.vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == dls.vocab
    assert list(dls.vocab.numericalize(["a", "nope"])) == [9, 0]


def test_vocab_extended_keeps_task_ids_and_appends_pretrained_tokens(task_corpus):
    task = Vocab.build(task_corpus[0].tokens, max_vocab=100, min_freq=2)
    other = Vocab(task.itos[:9] + ["zebra", task.itos[12], "aardvark"])
    ext = task.extended(other, max_vocab=1000)
    assert ext.itos[: len(task)] == task.itos
    assert ext.itos[len(task):] == ["zebra", "aardvark"]
    assert len(task.extended(other, max_vocab=len(task) + 1)) == len(task) + 1
    dls = lm_dataloaders(*task_corpus, bs=4, bptt=5, max_vocab=5000, extra_vocab=other)
    big = Vocab.build(task_corpus[0].tokens, max_vocab=5000, min_freq=2)
    assert len(big) < 5000 and dls.vocab.itos == big.itos + ["zebra", "aardvark"]
