"""Writes the example notebooks (run it, then execute them: see notebooks/README.md)."""
import nbformat as nbf

SETUP = """import os, time, warnings
warnings.filterwarnings('ignore')
QUICK = os.environ.get('ULMFIT_QUICK') == '1'   # CI sets this: fewer articles and epochs, the same models
import numpy as np, pandas as pd, torch
torch.manual_seed(0)"""


def nb(cells, path):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.metadata["execution"] = {"timeout": 1200}  # nbmake's per-cell limit: LM fine-tuning on a busy 2-core machine
    n.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    nbf.write(n, path)


nb([
"""md:# ULMFiT quickstart: the three stages with the API, beside TF-IDF

The embedded BBC News data (2,225 articles, 5 classes). Stage 1 is the general-domain
AWD-LSTM shipped with the package (`pretrained="general"`, see `ulmfit_callbacks/weights/MODEL_CARD.md`);
stage 2 fine-tunes it on the training articles with discriminative and slanted triangular
learning rates; stage 3 trains forward and backward classifiers with gradual unfreezing, and
the ensemble averages them. TF-IDF + logistic regression on the same split is the baseline.
`ulmfit demo` runs the same steps on all the articles.""",
SETUP,
"""from ulmfit_callbacks import *
from ulmfit_callbacks.baseline import TfidfBaseline
from ulmfit_callbacks.demo import split_indices
df = load_bbc_news()
if QUICK: df = df.sample(400, random_state=0).reset_index(drop=True)
corpus = Corpus.from_texts(df.text, df.label)             # tokenised once; every stage takes a Corpus
train, valid, test = (corpus.subset(idx) for idx in split_indices(len(df), seed=0))
max_tokens = 128 if QUICK else 512
print(corpus, '->', len(train), 'train /', len(valid), 'valid /', len(test), 'test articles')""",
"""md:## Stage 2: fine-tune the shipped LM on the training articles""",
"""learners = {}
for backwards in (False, True):
    lm_dls = lm_dataloaders(train, valid, bs=32, bptt=70, backwards=backwards)
    lm = ulmfit_lm_learner(lm_dls, pretrained='general')          # sizes and weights from the shipped LM
    stlr_cb = SlantedTriangularLR(lr_max=1e-2)
    lm.fit(1, cbs=[stlr_cb, DiscriminativeLR(decay=2.6), BF16Autocast()])
    learners['lm_bwd' if backwards else 'lm_fwd'] = lm
stlr_cb.plot();""",
"""md:## Stage 3: forward and backward classifiers (gradual unfreezing, averaging of the last epochs)""",
"""for backwards in (False, True):
    lm = learners['lm_bwd' if backwards else 'lm_fwd']
    dls = classifier_dataloaders(train, valid, vocab=lm.dls.vocab, backwards=backwards, max_tokens=max_tokens, bs=32)
    clf = ulmfit_classifier_learner(dls, encoder=lm, config=lm.model.config, drop_mult=0.5)
    n_epochs = 4 if QUICK else 6
    clf.fit(n_epochs, cbs=[SlantedTriangularLR(1e-2), DiscriminativeLR(decay=1.0), GradualUnfreezing([1, 2, 3]),
                           ASGDWeightAveraging(start_epoch=n_epochs - 2), BF16Autocast()])
    clf.max_tokens = max_tokens
    learners['backward' if backwards else 'forward'] = clf""",
"""md:## Test accuracy: each direction, the ensemble, and TF-IDF + LR on the same split""",
"""ens = ForwardBackwardEnsemble(learners['forward'], learners['backward'])
probs = ens.predict_proba(test)
y = np.array(test.labels)
acc = {k: float((np.array(ens.classes)[p.argmax(1).numpy()] == y).mean()) for k, p in probs.items()}
base = TfidfBaseline().fit(train.texts, train.labels)
acc['TF-IDF + LR'] = base.accuracy(test.texts, test.labels)
print(ens.predict('The striker scored twice as the champions won the cup final')[0])
pd.Series(acc, name='test accuracy').to_frame()""",
], "notebooks/01_quickstart.ipynb")

nb([
"""md:# Our callbacks in a stock fastai training loop, from the shipped LM

fastai's own `AWD_LSTM`, `language_model_learner` and `text_classifier_learner`, started from
the shipped general-domain LM (converted to fastai's parameter names by `to_fastai_state_dict`);
each ULMFiT behaviour added as a callback: `SlantedTriangularLR`, `DiscriminativeLR`,
`GradualUnfreezing`, `ASGDWeightAveraging`. Data: short BBC News texts (headline and first paragraph).""",
SETUP,
"""from fastai.text.all import *
from ulmfit_callbacks import (SlantedTriangularLR, DiscriminativeLR, GradualUnfreezing, ASGDWeightAveraging,
                              AWDLSTMConfig, AWDLSTMLanguageModel, load_bbc_news, to_fastai_state_dict)
from ulmfit_callbacks.artifact import read_model_folder, shipped_model_path
from ulmfit_callbacks.pretrained import load_pretrained
bbc = load_bbc_news(verbose=False)
parts = bbc.text.str.split('\\n')
df = pd.DataFrame({'text': parts.str[0] + '. ' + parts.apply(lambda p: next((x for x in p[1:] if x.strip()), '')),
                   'label': bbc.label}).sample(frac=1, random_state=0).reset_index(drop=True)
df = df.iloc[: 800 if QUICK else 2225]
meta, itos, state = read_model_folder(shipped_model_path('general'))
sizes = {k: meta['config'][k] for k in ('emb_sz', 'n_hid', 'n_layers')}
dls_lm = TextDataLoaders.from_df(df, text_col='text', is_lm=True, valid_pct=0.1, bs=32, seq_len=40, seed=0)
print(sizes, len(dls_lm.vocab), 'tokens in fastai\\'s vocabulary')""",
"""md:## Language model: fastai's `AWD_LSTM` with the shipped weights, STLR + discriminative lrs + averaging""",
"""learn = language_model_learner(dls_lm, AWD_LSTM, config=dict(awd_lstm_lm_config, **sizes), pretrained=False,
                               metrics=[accuracy, Perplexity()])
tmp = AWDLSTMLanguageModel(len(dls_lm.vocab), AWDLSTMConfig(**sizes))
print(load_pretrained(tmp, state, itos, list(dls_lm.vocab)))     # rows matched by token into fastai's vocabulary
learn.model.load_state_dict(to_fastai_state_dict(tmp.state_dict()))
print('before fine-tuning:', learn.validate())
stlr_cb = SlantedTriangularLR(lr_max=1e-2)
asgd = ASGDWeightAveraging(start_epoch=1)
learn.fit(2, cbs=[stlr_cb, DiscriminativeLR(), asgd])
print('averaging started at iteration', asgd.start_iter, '; iterates averaged:', asgd.n_averaged)
fig = stlr_cb.plot()   # one line per parameter group: fastai's LM groups put embedding+decoder last""",
"""md:## Classifier: gradual unfreezing inside one `fit`, with STLR over the whole fit""",
"""dls_clas = TextDataLoaders.from_df(df, text_col='text', label_col='label', valid_pct=0.2, bs=32, seed=0,
                                   text_vocab=dls_lm.vocab)
clas = text_classifier_learner(dls_clas, AWD_LSTM, config=dict(awd_lstm_clas_config, **sizes), pretrained=False,
                               drop_mult=0.5, metrics=accuracy)
clas.model[0].module.load_state_dict(learn.model[0].state_dict())   # the fine-tuned encoder
gu = GradualUnfreezing()
clas_stlr = SlantedTriangularLR(lr_max=1e-2)
clas.fit(4, cbs=[clas_stlr, DiscriminativeLR(decay=1.0), gu])
print('trainable groups per epoch:', [gu.trainable_groups(e, len(clas.opt.param_lists)) for e in range(4)])
fig = clas_stlr.plot()""",
], "notebooks/02_dropin_callbacks.ipynb")

nb([
"""md:# Your own CSV: the stage functions, evaluation beside TF-IDF, predictions as a table

What `ulmfit finetune-lm`, `train-classifier`, `evaluate --baseline` and `predict --csv` do,
from Python. The CSV here is written from short BBC News texts (headline and first paragraph);
put your own file in its place. Text columns are read as text (a review that says "None" stays
"None"), empty texts are skipped in training and kept in prediction.""",
SETUP,
"""from ulmfit_callbacks import Corpus, load_bbc_news, predict
from ulmfit_callbacks.pipeline import DEFAULT_LM, DEFAULT_CLASSIFIER, finetune_lm, train_classifier
from ulmfit_callbacks.evaluation import classification_metrics
from ulmfit_callbacks.baseline import TfidfBaseline
import dataclasses
bbc = load_bbc_news(verbose=False)
parts = bbc.text.str.split('\\n')
df = pd.DataFrame({'id': range(len(bbc)), 'text': parts.str[0] + '. ' + parts.apply(lambda p: next((x for x in p[1:] if x.strip()), '')),
                   'label': bbc.label}).sample(frac=1, random_state=1)
n_test = 425
df.iloc[n_test:].to_csv('my_train.csv', index=False)
df.iloc[:n_test].to_csv('my_test.csv', index=False)
data = Corpus.read('my_train.csv', 'text', 'label')       # read and tokenised once
if QUICK: data = data[:900]
train, valid = data.split(0.1, seed=0)
print(train, '|', valid)""",
"""lm_recipe = dataclasses.replace(DEFAULT_LM, epochs=1 if QUICK else DEFAULT_LM.epochs)
clf_recipe = dataclasses.replace(DEFAULT_CLASSIFIER, epochs=4 if QUICK else DEFAULT_CLASSIFIER.epochs, asgd_start_epoch=-2)
_, lm_metrics = finetune_lm(train, valid, 'runs/my_lm', lm_recipe, pretrained='general')
_, clf_metrics = train_classifier(train, valid, 'runs/my_clf', clf_recipe, lm='runs/my_lm')
print('LM perplexity', round(lm_metrics['perplexity'], 1), '| validation accuracy', round(clf_metrics['accuracy'], 4))""",
"""md:## Test metrics, beside TF-IDF + logistic regression fitted on the same training file""",
"""test_df = pd.read_csv('my_test.csv', dtype=str, keep_default_na=False)
preds = predict('runs/my_clf', test_df)                    # every column kept, + label and probabilities
classes = [c[len('prob_'):] for c in preds.columns if c.startswith('prob_')]
ours = classification_metrics(test_df.label, preds[['prob_' + c for c in classes]].to_numpy(), classes)
base = TfidfBaseline().fit(data.texts, data.labels)
tfidf = classification_metrics(test_df.label, base.predict_proba(test_df.text), base.classes)
pd.DataFrame({'ULMFiT (forward)': {k: ours[k] for k in ('accuracy', 'macro_f1')},
              'TF-IDF + LR': {k: tfidf[k] for k in ('accuracy', 'macro_f1')}})""",
"""md:## Predictions next to the user's columns""",
"""preds.head()""",
"""md:## Why: the tokens that drove a prediction, and the validation texts the model gets most wrong

Integrated gradients (Sundararajan et al. 2017) over the embedding output: green tokens push
towards the predicted class, red ones away (`ulmfit explain` on the command line). On TREC-6,
deleting each text's top-2 tokens moves the probability 0.66 on average against 0.14 for two
random tokens (`benchmarks/RESULTS.md`).""",
"""from ulmfit_callbacks.explain import explain, top_losses
from ulmfit_callbacks.pipeline import load_classifier
clf = load_classifier('runs/my_clf')
explain(clf, test_df.text.iloc[0])""",
"""top_losses(clf, valid.texts, valid.labels, k=5)[['text', 'label', 'predicted', 'probability', 'loss']]""",
], "notebooks/03_your_csv.ipynb")
