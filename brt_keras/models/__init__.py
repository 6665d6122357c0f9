"""BRT models: the backbone, the causal LM and their presets."""

from brt_keras.models.block_recurrent_backbone import BlockRecurrentBackbone
from brt_keras.models.block_recurrent_causal_lm import BlockRecurrentCausalLM

__all__ = ["BlockRecurrentBackbone", "BlockRecurrentCausalLM"]
