"""Distributed data parallel on CPU (gloo, 2 processes) through fastai's ``learn.distrib_ctx()``:
our loaders under fastai's DistributedDL, the LM and the classifier stage with every callback."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastai.callback.core import Callback


# ---------------------------------------------------------------------------------------------
# Helpers: CPU process groups for fastai's DistributedTrainer, tiny learners, replays in one process.
# ---------------------------------------------------------------------------------------------
def _cpu_broadcast(self, t, rank):
    """fastai's ``DistributedDL._broadcast`` with the indices left on the CPU (gloo; fastai's moves them to CUDA for nccl)."""
    t = torch.tensor(t, dtype=torch.long)
    dist.broadcast(t, rank)
    return t.tolist()


def _init_gloo(rank: int, world: int, port: int):
    """What ``torchrun`` + ``accelerate`` expect of a CPU process, and fastai's index broadcast on gloo."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    import warnings
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from fastai.distributed import DistributedDL
    DistributedDL._broadcast = _cpu_broadcast


TINY = dict(emb_sz=8, n_hid=16, n_layers=2)


def _lm_learner(dls):
    """The tiny LM of the two-process test, without dropout (so one process can replay it exactly)."""
    from ulmfit_callbacks import AWDLSTMConfig, ulmfit_lm_learner
    torch.manual_seed(0)
    return ulmfit_lm_learner(dls, config=AWDLSTMConfig(**TINY), drop_mult=0.0)


def _clf_learner(dls):
    from ulmfit_callbacks import AWDLSTMConfig, ulmfit_classifier_learner
    torch.manual_seed(0)
    return ulmfit_classifier_learner(dls, config=AWDLSTMConfig(**TINY), drop_mult=0.0, head_ps=(0.0, 0.0), bptt=5)


class _Replay:
    """A loader that plays given batches, one list per epoch."""

    def __init__(self, epochs):
        self.epochs = list(epochs)

    def __len__(self):
        return len(self.epochs[0])

    def __iter__(self):
        return iter(self.epochs.pop(0))

    def to(self, device):
        return self


class _Pair(torch.nn.Module):
    """One step of two DDP ranks in one process: each rank's batch through the model on its own
    (BatchNorm statistics per rank, as without sync_bn), logits stacked so the loss is their mean."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x0, x1=None):
        return self.m(x0) if x1 is None else torch.cat([self.m(x0), self.m(x1)])


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Trace(Callback):
    """Per training epoch: the documents read (classifier), the batches and the losses."""
    order = 100

    def __init__(self):
        self.docs, self.batches, self.losses, self.n_iter = [], [], [], []

    def before_train(self):
        self.docs.append([])
        self.batches.append([])
        self.losses.append([])
        self.n_iter.append(len(self.dl))

    def after_batch(self):
        if self.training:
            self.batches[-1].append(tuple(t.detach().cpu() for t in (*self.learn.xb, *self.learn.yb)))
            self.losses[-1].append(float(self.learn.loss))


def _worker(rank, world, port, out_dir, seed):
    """One rank of the classifier stage with every callback, under ``learn.distrib_ctx()``."""
    _init_gloo(rank, world, port)
    try:
        from conftest import bbc_short_texts

        from ulmfit_callbacks import (
            ASGDWeightAveraging,
            AWDLSTMConfig,
            Corpus,
            DiscriminativeLR,
            GradualUnfreezing,
            SlantedTriangularLR,
            classifier_dataloaders,
            lm_dataloaders,
            ulmfit_classifier_learner,
        )
        df = bbc_short_texts().iloc[:320]
        torch.manual_seed(seed)
        vocab = lm_dataloaders(df.text.tolist(), bs=4, bptt=5, valid_pct=0.1).vocab
        dls = classifier_dataloaders(Corpus.from_texts(df.text, df.label), Corpus.from_texts(df.text[:40], df.label[:40]),
                                     vocab=vocab, bs=16, seed=seed)
        torch.manual_seed(seed)  # same initial weights on every rank
        learn = ulmfit_classifier_learner(dls, config=AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
        gu = GradualUnfreezing(method="grad_mask")  # requires_grad never flips once DDP has wrapped the model
        changed = []

        class Frozen(Callback):
            order = 100

            def before_train(self):
                self.before = [p.detach().clone() for p in self.opt.param_lists[0]]

            def after_train(self):
                changed.append(any(not torch.equal(a, p) for a, p in zip(self.before, self.opt.param_lists[0])))
        with learn.no_bar(), learn.no_logging(), learn.distrib_ctx(sync_bn=False):
            learn.fit(3, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR(), gu, ASGDWeightAveraging(start=4), Frozen()])
        torch.save({"params": {k: v.detach().clone() for k, v in learn.model.named_parameters()},
                    "embedding_changed": changed}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _ctx_worker(rank, world, port, data_file, out_dir):
    """One rank training the tiny LM, then the tiny classifier, under ``learn.distrib_ctx()``; saves what it read and its weights."""
    _init_gloo(rank, world, port)
    try:
        import pickle
        with open(data_file, "rb") as f:
            lm_dls, clf_dls = pickle.load(f)
        out = {}
        for name, learn in (("lm", _lm_learner(lm_dls)), ("clf", _clf_learner(clf_dls))):
            trace = _Trace()
            if name == "clf":  # the documents each rank reads
                tr, pad = clf_dls.train, clf_dls.train.pad
                tr.pad = lambda idxs: (trace.docs[-1].extend(idxs), pad(idxs))[1]
            with learn.no_bar(), learn.no_logging(), learn.distrib_ctx(sync_bn=False):
                learn.fit(2, 3e-3, cbs=trace)
            assert type(learn.model).__name__ != "DistributedDataParallel" and learn.dls.train is learn.dls.loaders[0]
            out[name] = dict(params={k: v.detach().clone() for k, v in learn.model.named_parameters()},
                             docs=trace.docs, batches=trace.batches, losses=trace.losses, n_iter=trace.n_iter)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_end_identical(tmp_path):
    """STLR, discriminative lrs, gradual unfreezing (gradient masks) and ASGD averaging under DDP: both ranks end alike."""
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), 0), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    # the embedding (group 0 of 4) stays frozen for the 3 epochs of gradual unfreezing on both ranks
    assert r0["embedding_changed"] == r1["embedding_changed"] == [False, False, False]


def test_lm_data_order_is_consistent_across_ranks():
    """Same seed on every rank: the same document order and BPTT lengths, disjoint rows that
    together are exactly the batches of one loader with world_size x bs rows."""
    import numpy as np

    from ulmfit_callbacks import LMLoader
    docs = [np.arange(1000 * i, 1000 * i + n) for i, n in enumerate([300, 520, 410, 280, 660, 390])]
    ranks = [LMLoader(docs, bs=3, bptt=20, shuffle=True, seed=7, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    whole = LMLoader(docs, bs=6, bptt=20, shuffle=True, seed=7)
    for (x0, y0), (x1, y1), (xw, yw) in zip(*ranks, whole):
        assert x0.shape == x1.shape  # same drawn seq_len on both ranks
        assert torch.equal(torch.cat([x0, x1]), xw) and torch.equal(torch.cat([y0, y1]), yw)
    with pytest.raises(ValueError, match="shared `seed`"):
        LMLoader(docs, bs=3, shuffle=True, rank=1, world_size=2)


def test_loaders_under_fastai_distributed_dl(monkeypatch):
    """Both ranks' DistributedDL over our loaders, in one process: disjoint shards that together are the
    epoch, as many batches on each rank as ``len()`` says, no one-row training batch."""
    import numpy as np
    from fastai.distributed import DistributedDL

    from ulmfit_callbacks import ClassifierLoader, LMLoader
    monkeypatch.setattr(DistributedDL, "_broadcast", lambda self, t, rank: t)  # no process group: rank 0's list as is
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 50, rng.integers(3, 30)) for _ in range(97)]
    for n, bs, world in [(80, 8, 2), (97, 8, 2), (34, 16, 2), (35, 4, 2), (10, 3, 2), (50, 4, 3)]:
        one = ClassifierLoader(docs[:n], np.arange(n), bs=bs, shuffle=True, seed=1)
        epochs = [one.get_idxs() for _ in range(2)]
        ranks = [DistributedDL(one.new(), rank=r, world_size=world) for r in range(world)]
        for epoch in epochs:
            seen = [[y.tolist() for _, y in dl] for dl in ranks]
            assert all(len(s) == len(ranks[0]) for s in seen), (n, bs, world)  # equal batch counts: DDP cannot hang
            assert all(len(b) > 1 for s in seen for b in s)
            flat = [sum(s, []) for s in seen]
            m = -(-len(epoch) // world)
            padded = epoch + epoch[: m * world - len(epoch)]  # fastai repeats the first documents
            assert sum(flat, []) == padded  # rank r reads the r-th slice of rank 0's order, each document once
            assert set(flat[0]).isdisjoint(flat[1]) or m * world > len(epoch)
        assert len(set(epochs[0])) == len(epochs[0]) == n - (n % bs == 1)  # every document once (but the drop_last one)
    lm = LMLoader(docs, bs=3, bptt=5, shuffle=True, seed=4)
    ref = lm.new()
    whole = [list(ref) for _ in range(2)]
    ranks = [DistributedDL(lm.new(), rank=r, world_size=2) for r in range(2)]
    assert ranks[1].variable_bptt and ranks[1].bptt == 5  # the loader's attributes through the wrapper
    for epoch in whole:
        seen = [list(dl) for dl in ranks]
        assert len(seen[0]) == len(seen[1]) == len(ranks[0]) == len(epoch) // 2
        for (x, y), (xw, yw) in zip(seen[0] + seen[1], epoch):
            assert torch.equal(x, xw) and torch.equal(y, yw)
    monkeypatch.setattr("ulmfit_callbacks.loaders._world_size", lambda: 2)  # inside a process group of 2
    with pytest.raises(ValueError, match="give the loader a `seed`"):
        list(LMLoader(docs, bs=3, bptt=5, shuffle=True))


@pytest.mark.slow
def test_distrib_ctx_trains_on_two_processes(tmp_path, task_corpus):
    """``with learn.distrib_ctx(): learn.fit(...)`` on 2 CPU processes started by ``torchrun`` (gloo) for the LM and the
    classifier: each rank reads its own part of every epoch, the parts make up the epoch, the
    ranks' weights stay identical, the loss falls, and one process replaying both ranks' batches
    (their losses averaged, as DDP averages gradients) ends at the same weights."""
    import pickle

    import numpy as np

    from ulmfit_callbacks import ULMFiTDataLoaders, classifier_dataloaders, lm_dataloaders
    train, valid = task_corpus
    lm_dls = lm_dataloaders(train[:40], valid[:20], bs=4, bptt=5, min_freq=2, seed=0, variable_bptt=False)
    tr = lm_dls.train  # the stream cut to 4 rows of 2 x 8 x bptt + 1 tokens: every batch bptt long, 8 per rank
    keep = np.cumsum([len(d) for d in tr.docs]) <= tr.bs * (16 * tr.bptt + 1)
    docs = [d for d, k in zip(tr.docs, keep) if k]
    docs.append(tr.docs[len(docs)][: tr.bs * (16 * tr.bptt + 1) - sum(map(len, docs))])
    lm_dls.loaders[0] = tr.new(docs=docs)
    assert len(lm_dls.train) == 16
    clf_dls = classifier_dataloaders(train[:80], valid[:16], vocab=lm_dls.vocab, bs=8, seed=0)
    with open(tmp_path / "data.pkl", "wb") as f:
        pickle.dump((lm_dls, clf_dls), f)
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                        f"--master-port={_free_port()}", __file__, str(tmp_path / "data.pkl"), str(tmp_path)],  # torchrun
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in ("lm", "clf"):
        a, b = r0[name], r1[name]
        for k in a["params"]:
            assert torch.equal(a["params"][k], b["params"][k]), (name, k)
        assert a["n_iter"] == b["n_iter"] == [len(e) for e in a["batches"]] == [len(e) for e in b["batches"]]
        for ra in (a, b):  # the loss falls on each rank
            assert np.mean(ra["losses"][-1]) < np.mean(ra["losses"][0])
    # classifier: each rank reads its own 40 documents per epoch, together all 80 once, in a new order each epoch
    for d0, d1 in zip(r0["clf"]["docs"], r1["clf"]["docs"]):
        assert len(d0) == len(d1) == 40 and sorted(d0 + d1) == list(range(80))
    assert r0["clf"]["docs"][0] != r0["clf"]["docs"][1]
    # LM: rank 0 reads the first half of each epoch's batches, rank 1 the second half
    ref = lm_dls.train.new()
    for e in range(2):
        whole = list(ref)
        got = r0["lm"]["batches"][e] + r1["lm"]["batches"][e]
        assert len(got) == len(whole) == 16
        assert all(torch.equal(x, xw) and torch.equal(y, yw) for (x, y), (xw, yw) in zip(got, whole))

    # one process, both ranks' batches per step: the same weights (DDP averages the two ranks' gradients)
    def replay(name, batches, learner, wrap=None):
        dls = lm_dls if name == "lm" else clf_dls
        rdls = ULMFiTDataLoaders(_Replay(batches), dls.valid, vocab=dls.vocab, kind=dls.kind, classes=dls.classes, device="cpu")
        learn = learner(rdls)
        if wrap:
            learn.create_opt()
            learn.model = wrap(learn.model)
        with learn.no_bar(), learn.no_logging():
            learn.fit(2, 3e-3)
        return dict((learn.model.m if wrap else learn.model).named_parameters())
    lm_steps = [[(torch.cat([x0, x1]), torch.cat([y0, y1])) for (x0, y0), (x1, y1) in zip(e0, e1)]
                for e0, e1 in zip(r0["lm"]["batches"], r1["lm"]["batches"])]
    clf_steps = [[(x0, x1, torch.cat([y0, y1])) for (x0, y0), (x1, y1) in zip(e0, e1)]
                 for e0, e1 in zip(r0["clf"]["batches"], r1["clf"]["batches"])]
    init = {"lm": dict(_lm_learner(lm_dls).model.named_parameters()), "clf": dict(_clf_learner(clf_dls).model.named_parameters())}
    for name, params, tol in (("lm", replay("lm", lm_steps, _lm_learner), 1e-4), ("clf", replay("clf", clf_steps, _clf_learner, _Pair), 0.03)):
        for k, v in params.items():  # the distance to the DDP weights, relative to how far training moved them
            ddp = r0[name]["params"][k]
            assert (v.detach() - ddp).norm() <= tol * (ddp - init[name][k].detach()).norm(), (name, k)
    # the classifier's tolerance: its first step agrees to 1e-8, but BatchNorm over 8 rows then amplifies rounding
    # (0.4% after 10 steps); replaying rank 0's batches alone lands 113% away


if __name__ == "__main__":  # one rank, as started by torchrun in test_distrib_ctx_trains_on_two_processes
    import sys
    _ctx_worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["MASTER_PORT"]), *sys.argv[1:3])
