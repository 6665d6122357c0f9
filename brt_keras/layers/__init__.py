"""BRT layers: attention, the recurrent cell and the layers built on them."""

from brt_keras.layers.block_recurrent_cell import BlockRecurrentCell
from brt_keras.layers.block_recurrent_layer import BlockRecurrentLayer
from brt_keras.layers.block_rnn import BlockRNN
from brt_keras.layers.hash_dropout import HashDropout
from brt_keras.layers.not_quantized import NotQuantized
from brt_keras.layers.readout import tied_readout
from brt_keras.layers.recurrent_gate import RecurrentGate
from brt_keras.layers.rms_norm import RMSNorm
from brt_keras.layers.sliding_window_attention import SlidingWindowAttention
from brt_keras.layers.sliding_window_layer import SlidingWindowLayer
from brt_keras.layers.t5_relative_position_bias import T5RelativePositionBias
from brt_keras.layers.tiled_dropout import TiledDropout
from brt_keras.layers.token_dense import TokenDense

__all__ = [
    "BlockRNN",
    "BlockRecurrentCell",
    "BlockRecurrentLayer",
    "HashDropout",
    "NotQuantized",
    "RMSNorm",
    "RecurrentGate",
    "SlidingWindowAttention",
    "SlidingWindowLayer",
    "T5RelativePositionBias",
    "TiledDropout",
    "TokenDense",
    "tied_readout",
]
