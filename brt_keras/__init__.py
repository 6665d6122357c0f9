"""brt_keras: the Block-Recurrent Transformer (Hutchins et al., 2022) in Keras 3.

The recurrent cell is `brt_keras.layers.BlockRecurrentCell`
(`brt_keras/layers/block_recurrent_cell.py`).
"""

from brt_keras import convert
from brt_keras import layers
from brt_keras import models
from brt_keras import samplers
from brt_keras.models import BlockRecurrentBackbone
from brt_keras.models import BlockRecurrentCausalLM

__all__ = [
    "BlockRecurrentBackbone",
    "BlockRecurrentCausalLM",
    "convert",
    "layers",
    "models",
    "samplers",
]
