"""ULMFiT (Howard & Ruder 2018) for fastai, as pluggable callbacks, splitters and models."""
__version__ = "0.2.0"

import warnings as _warnings

with _warnings.catch_warnings():  # fastai's import under torch 2.14 warns about torch.jit.script
    _warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from .averaging import ASGDWeightAveraging
    from .baseline import TfidfBaseline
    from .corpus import Corpus, load_bbc_news, tokenize
    from .ensemble import ForwardBackwardEnsemble
    from .evaluation import predict
    from .learner import encoder_state_dict, ulmfit_classifier_learner, ulmfit_lm_learner
    from .loaders import ClassifierLoader, LMLoader, ULMFiTDataLoaders, classifier_dataloaders, lm_dataloaders
    from .memory import ReleaseMemory
    from .models import (
        AWDLSTM,
        AWDLSTMConfig,
        AWDLSTMLanguageModel,
        BPT3CEncoder,
        PoolingClassifierHead,
        QRNNLayer,
        ULMFiTClassifier,
        from_fastai_state_dict,
        to_fastai_state_dict,
    )
    from .precision import BF16Autocast
    from .pretrained import load_pretrained
    from .regularization import ActivationRegularizer
    from .schedule import DiscriminativeLR, SlantedTriangularLR, plot_lrs, stlr
    from .splitters import classifier_splitter, discriminative_lrs, lm_splitter
    from .unfreezing import GradualUnfreezing
    from .vocab import Vocab

__all__ = ["ASGDWeightAveraging", "BF16Autocast", "ActivationRegularizer", "AWDLSTM", "AWDLSTMConfig", "AWDLSTMLanguageModel",
           "BPT3CEncoder", "ClassifierLoader", "Corpus", "DiscriminativeLR", "ForwardBackwardEnsemble", "GradualUnfreezing",
           "LMLoader", "PoolingClassifierHead", "QRNNLayer", "ReleaseMemory", "SlantedTriangularLR", "TfidfBaseline",
           "ULMFiTClassifier", "ULMFiTDataLoaders",
           "Vocab", "classifier_dataloaders", "classifier_splitter", "discriminative_lrs", "encoder_state_dict",
           "from_fastai_state_dict", "lm_dataloaders", "lm_splitter", "load_bbc_news", "load_pretrained", "plot_lrs", "predict",
           "stlr", "to_fastai_state_dict", "tokenize", "ulmfit_classifier_learner", "ulmfit_lm_learner"]
