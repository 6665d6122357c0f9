"""Converters from the official meliad implementation."""

from brt_keras.convert.meliad import assign_params
from brt_keras.convert.meliad import backbone_paths
from brt_keras.convert.meliad import layer_from_meliad
from brt_keras.convert.meliad import layer_paths
from brt_keras.convert.meliad import state_from_meliad
from brt_keras.convert.meliad import state_to_meliad

__all__ = [
    "assign_params",
    "backbone_paths",
    "layer_from_meliad",
    "layer_paths",
    "state_from_meliad",
    "state_to_meliad",
]
