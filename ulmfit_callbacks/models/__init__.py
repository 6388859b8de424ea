"""Models: our AWD-LSTM (LSTM or QRNN layers) and the ULMFiT classifier (BPT3C encoder + concat-pooling head)."""
from .awd_lstm import *  # noqa: F401,F403
from .classifier import *  # noqa: F401,F403
from .qrnn import *  # noqa: F401,F403
