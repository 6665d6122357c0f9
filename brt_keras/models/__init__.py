"""BRT models: the backbone, the causal LM, presets, and fit-time pieces."""

from brt_keras.models.block_recurrent_backbone import BlockRecurrentBackbone
from brt_keras.models.block_recurrent_causal_lm import BlockRecurrentCausalLM
from brt_keras.models.block_recurrent_causal_lm_preprocessor import (
    BlockRecurrentCausalLMPreprocessor,
)
from brt_keras.models.block_recurrent_sentence_piece_tokenizer import (
    BlockRecurrentSentencePieceTokenizer,
)
from brt_keras.models.block_recurrent_stream_model import BlockRecurrentStreamModel
from brt_keras.models.block_recurrent_tokenizer import BlockRecurrentTokenizer
from brt_keras.models.optimizers import PaperAdafactor
from brt_keras.models.optimizers import RsqrtWarmup
from brt_keras.models.optimizers import WarmupCosine

__all__ = [
    "BlockRecurrentBackbone",
    "BlockRecurrentCausalLM",
    "BlockRecurrentCausalLMPreprocessor",
    "BlockRecurrentSentencePieceTokenizer",
    "BlockRecurrentStreamModel",
    "BlockRecurrentTokenizer",
    "PaperAdafactor",
    "RsqrtWarmup",
    "WarmupCosine",
]
