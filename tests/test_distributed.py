"""DistributedDataParallel on CPU (gloo, 2 processes): the classifier stage with every callback."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, world, init_file, out_dir, seed):
    import warnings
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from conftest import bbc_short_texts
        from torch.nn.parallel import DistributedDataParallel as DDP

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
        tr = dls.train  # shard the training documents: rank r takes every world-th one (same count on each rank)
        n = len(tr.docs) // world * world
        dls.loaders[0] = tr.new(docs=tr.docs[rank:n:world], labels=tr.labels[rank:n:world], seed=seed)
        torch.manual_seed(seed)  # same initial weights on every rank
        learn = ulmfit_classifier_learner(dls, config=AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
        learn.create_opt()  # parameter groups from the plain model, then wrap
        learn.model = DDP(learn.model)
        gu = GradualUnfreezing(method="grad_mask")  # requires_grad never flips after wrapping
        changed = []
        from fastai.callback.core import Callback

        class Frozen(Callback):
            order = 100

            def before_train(self):
                self.before = [p.detach().clone() for p in self.opt.param_lists[0]]

            def after_train(self):
                changed.append(any(not torch.equal(a, p) for a, p in zip(self.before, self.opt.param_lists[0])))
        with learn.no_bar(), learn.no_logging():
            learn.fit(3, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR(), gu, ASGDWeightAveraging(start=4), Frozen()])
        torch.save({"params": {k: v.detach().clone() for k, v in learn.model.module.named_parameters()},
                    "embedding_changed": changed}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_end_identical(tmp_path):
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), 0), nprocs=2, join=True,
                       start_method="spawn")
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
