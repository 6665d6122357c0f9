"""RMS normalization that stays in float when the model is quantized."""

import keras

from brt_keras.layers.not_quantized import NotQuantized


@keras.saving.register_keras_serializable(package="brt_keras")
class RMSNorm(NotQuantized, keras.layers.RMSNormalization):
    """`keras.layers.RMSNormalization` (same arguments and weights) that
    `Model.quantize` leaves in float: a `[d]` scale per norm is too small
    to be worth quantizing and sets the scale of every activation.

    Example:
    >>> norm = RMSNorm(epsilon=1e-6)
    >>> norm(np.ones((2, 3, 8))).shape
    (2, 3, 8)
    """
