"""Writes the example notebooks (run it, then execute them: see notebooks/README.md)."""
import nbformat as nbf

SETUP = """import os, time, warnings
warnings.filterwarnings('ignore')
QUICK = os.environ.get('ULMFIT_QUICK') == '1'   # CI sets this to shrink the work
DATA = '../../shared/data' if os.path.exists('../../shared/data') else '../shared/data'
import torch; torch.manual_seed(0)"""


def nb(cells, path):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    nbf.write(n, path)


nb([
"""md:# ULMFiT quickstart: the three stages with the API

The embedded BBC News data (2,225 articles, 5 classes), a CPU-sized AWD-LSTM, and every
behaviour of the paper: discriminative fine-tuning, slanted triangular learning rates,
gradual unfreezing, forward and backward models and their ensemble. The CLI's `ulmfit demo`
runs the same steps.""",
SETUP,
"""from ulmfit_callbacks import *
df = load_bbc_news()
if QUICK: df = df.sample(800, random_state=0).reset_index(drop=True)
import numpy as np
perm = np.random.default_rng(0).permutation(len(df))
test, valid, train = np.split(perm, [len(df) // 5, len(df) // 5 + len(df) // 10])
toks = tokenize(df.text.tolist(), n_workers=2)
pick = lambda idx: [toks[i] for i in idx]
print(len(train), 'train /', len(valid), 'valid /', len(test), 'test articles;', sum(map(len, toks)), 'tokens')""",
"""md:## Stage 2: fine-tune the language model (here from random weights; pass `pretrained=` for stage-1 weights)""",
"""cfg = AWDLSTMConfig(emb_sz=32, n_hid=64, n_layers=2) if QUICK else AWDLSTMConfig(emb_sz=64, n_hid=256, n_layers=2)
max_tokens = 150 if QUICK else 400
lm_dls = lm_dataloaders(None, tokens=(pick(train), pick(valid)), bs=32, bptt=70, max_vocab=8000)
lm = ulmfit_lm_learner(lm_dls, config=cfg)
stlr_cb = SlantedTriangularLR(lr_max=1e-2)
lm.fit(1, cbs=[stlr_cb, DiscriminativeLR(decay=2.6)])
stlr_cb.plot();""",
"""md:## Stage 3: the classifier, forward and backward, with gradual unfreezing""",
"""labels = df.label.tolist()
learners = {}
for backwards in (False, True):
    lm_b = lm
    if backwards:   # the backward LM: the same pipeline on reversed token order
        lm_b = ulmfit_lm_learner(lm_dataloaders(None, tokens=(pick(train), pick(valid)), bs=32, bptt=70,
                                                vocab=lm_dls.vocab, backwards=True), config=cfg)
        lm_b.fit(1, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR()])
    dls = classifier_dataloaders(None, [labels[i] for i in train], vocab=lm_dls.vocab, valid_labels=[labels[i] for i in valid],
                                 tokens=(pick(train), pick(valid)), backwards=backwards, max_tokens=max_tokens, bs=32)
    clf = ulmfit_classifier_learner(dls, config=cfg, encoder=lm_b, drop_mult=0.3 if QUICK else 1.0)  # tiny model: less dropout
    clf.fit(5 if QUICK else 8, cbs=[SlantedTriangularLR(2e-2), DiscriminativeLR(), GradualUnfreezing([1, 2])])
    learners['backward' if backwards else 'forward'] = clf""",
"""md:## Test accuracy of each direction and of the ensemble""",
"""from ulmfit_callbacks.ensemble import predict_tokens
y = np.array([learners['forward'].dls.classes.index(labels[i]) for i in test])
probs = {k: predict_tokens(l, pick(test), max_tokens=max_tokens) for k, l in learners.items()}
ens = ForwardBackwardEnsemble(learners['forward'], learners['backward'])
probs['ensemble'] = (probs['forward'] + probs['backward']) / 2
for k, p in probs.items():
    print(f'{k:9s} test accuracy {(p.argmax(1).numpy() == y).mean():.3f}')
print(ens.predict('The striker scored twice as the champions won the cup final'))""",
], "notebooks/01_quickstart.ipynb")

nb([
"""md:# Our callbacks in a stock fastai training loop

fastai's own `AWD_LSTM`, `language_model_learner` and `text_classifier_learner`; each ULMFiT
behaviour added as a callback: `SlantedTriangularLR`, `DiscriminativeLR`, `GradualUnfreezing`,
`ASGDWeightAveraging`. Data: a slice of TREC-6.""",
SETUP,
"""import pandas as pd
from fastai.text.all import *
from ulmfit_callbacks import SlantedTriangularLR, DiscriminativeLR, GradualUnfreezing, ASGDWeightAveraging
df = pd.read_csv(f'{DATA}/trec6/train.csv').iloc[: 400 if QUICK else 3000]
small = dict(emb_sz=32, n_hid=64, n_layers=2) if QUICK else dict(emb_sz=100, n_hid=300, n_layers=3)
dls_lm = TextDataLoaders.from_df(df, text_col='text', is_lm=True, valid_pct=0.1, bs=32, seq_len=20, seed=0)""",
"""md:## Language model: STLR + discriminative lrs + NT-ASGD on fastai's `AWD_LSTM`""",
"""learn = language_model_learner(dls_lm, AWD_LSTM, config=dict(awd_lstm_lm_config, **small), pretrained=False,
                               metrics=[accuracy, Perplexity()])
stlr_cb = SlantedTriangularLR(lr_max=1e-2)
asgd = ASGDWeightAveraging(start_epoch=1)   # or ASGDWeightAveraging() for the NT-ASGD trigger
learn.fit(2 if QUICK else 4, cbs=[stlr_cb, DiscriminativeLR(), asgd])
print('averaging started at iteration', asgd.start_iter, '; iterates averaged:', asgd.n_averaged)
fig = stlr_cb.plot()   # one line per parameter group: fastai's LM groups put embedding+decoder last""",
"""md:## Classifier: gradual unfreezing inside one `fit`, with STLR over the whole fit""",
"""dls_clas = TextDataLoaders.from_df(df, text_col='text', label_col='label', valid_pct=0.2, bs=32, seed=0,
                                   text_vocab=dls_lm.vocab)
clas = text_classifier_learner(dls_clas, AWD_LSTM, config=dict(awd_lstm_clas_config, **small), pretrained=False,
                               metrics=accuracy)
clas.model[0].module.load_state_dict(learn.model[0].state_dict())   # the fine-tuned encoder
gu = GradualUnfreezing()
clas_stlr = SlantedTriangularLR(lr_max=2e-2)
clas.fit(4, cbs=[clas_stlr, DiscriminativeLR(), gu])
print('trainable groups per epoch:', [gu.trainable_groups(e, len(clas.opt.param_lists)) for e in range(4)])
fig = clas_stlr.plot()""",
], "notebooks/02_dropin_callbacks.ipynb")

nb([
"""md:# TREC-6: the three stages, the ensemble, and a model from scratch

Stage 1 on the general corpus (`../shared/data/general`, 2.7 M words), stage 2 on the TREC-6
training questions, stage 3 forward and backward classifiers, against the same classifier
trained from scratch. CPU-sized; `benchmarks/` has the full, multi-seed comparison.""",
SETUP,
"""import pandas as pd, numpy as np
from ulmfit_callbacks import *
from ulmfit_callbacks.pipeline import Recipe, pretrain_lm, finetune_lm, train_classifier, load_classifier
from ulmfit_callbacks.ensemble import predict_texts
g_train = pd.read_csv(f'{DATA}/general/train.csv').text.tolist()
g_valid = pd.read_csv(f'{DATA}/general/valid.csv').text.tolist()
tr, te = pd.read_csv(f'{DATA}/trec6/train.csv'), pd.read_csv(f'{DATA}/trec6/test.csv')
n_general = 300 if QUICK else 6000            # paragraphs of the general corpus for stage 1
cfg = AWDLSTMConfig(emb_sz=16, n_hid=32, n_layers=2) if QUICK else AWDLSTMConfig(emb_sz=200, n_hid=400, n_layers=3)
if QUICK: tr = tr.sample(600, random_state=0)""",
"""t = time.time()
results = {}
for backwards in (False, True):
    d = 'bwd' if backwards else 'fwd'
    _, m1 = pretrain_lm(g_train[:n_general], g_valid[:300], f'runs/trec/general_{d}', cfg, Recipe(epochs=1, lr=1e-2),
                        backwards=backwards, bptt=70)
    _, m2 = finetune_lm(tr.text.tolist(), te.text.tolist()[:100], f'runs/trec/lm_{d}', Recipe(epochs=2, lr=1e-2),
                        pretrained=f'runs/trec/general_{d}', backwards=backwards, bptt=20)
    _, m3 = train_classifier(tr.text, tr.label, te.text, te.label, f'runs/trec/clf_{d}',
                             Recipe(epochs=5, lr=3e-2, unfreeze_schedule=[1, 2]), lm=f'runs/trec/lm_{d}', backwards=backwards)
    results[d] = m3['accuracy']
    print(d, 'stage-1 ppl', round(m1['perplexity'], 1), '| stage-2 ppl', round(m2['perplexity'], 1), '| test acc', round(m3['accuracy'], 4))
print(f'{(time.time() - t) / 60:.1f} min')""",
"""fwd, bwd = load_classifier('runs/trec/clf_fwd'), load_classifier('runs/trec/clf_bwd')
ens = ForwardBackwardEnsemble(fwd, bwd)
probs, _ = ens.get_preds(te.text.tolist())
results['ensemble'] = float((np.array(ens.classes)[probs.argmax(1).numpy()] == te.label.values).mean())
lm_vocab = fwd.dls.vocab
_, scratch = train_classifier(tr.text, tr.label, te.text, te.label, 'runs/trec/scratch', Recipe(epochs=5, lr=3e-2, unfreeze_schedule=[1, 2]),
                              config=cfg, vocab=lm_vocab)
results['from scratch'] = scratch['accuracy']
pd.Series(results, name='TREC-6 test accuracy').to_frame()""",
], "notebooks/03_trec6.ipynb")
