"""Dropout whose mask is tiled along the sequence, as the reference does."""

import keras
from keras import ops

from brt_keras.layers.hash_dropout import hash_uniform
from brt_keras.layers.not_quantized import NotQuantized


@keras.saving.register_keras_serializable(package="brt_keras")
class TiledDropout(NotQuantized, keras.layers.Layer):
    """Dropout with one Bernoulli mask of shape `(1, tile_length, d)`
    repeated over the batch and every `tile_length` positions.

    This is the reference's `tiled_dropout` (meliad `nn_components`), used on
    the attention input, the FFN output and before the readout. Besides
    matching the reference it draws `tile_length * d` random numbers per call
    instead of `B * L * d`, which matters: random number generation under XLA
    on CPU costs more than the layer's matmuls at the paper's sizes. The
    numbers come from `hash_uniform` (see `HashDropout`). No weights, so
    nothing to quantize (`NotQuantized`).

    Args:
        rate: float, fraction of units dropped.
        tile_length: int, period of the mask along the sequence (128).
        seed: int or None.

    Example:
    >>> y = TiledDropout(0.5, tile_length=4)(np.ones((2, 8, 3)), training=True)
    >>> bool(np.all(y[0, :4] == y[1, 4:]))  # same mask every 4 positions
    True
    """

    def __init__(self, rate, tile_length=128, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"rate must be in [0, 1); got {rate}.")
        self.rate = rate
        self.tile_length = tile_length
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, x, training=None, seed=None):
        """`seed`: optional `[2]` int tensor used instead of the next seed of
        the layer's generator (a rematerialised caller draws it once, so the
        recomputation draws the same mask)."""
        if not training or self.rate == 0:
            return x
        length, d = x.shape[-2], x.shape[-1]
        seed = self.seed_generator.next() if seed is None else seed
        if length is None:
            shape = (1, ops.shape(x)[-2], d)
            keep = hash_uniform(shape, seed) >= self.rate
        else:
            tile = min(self.tile_length, length)
            keep = hash_uniform((1, tile, d), seed)
            keep = ops.tile(keep >= self.rate, (1, -(-length // tile), 1))[:, :length]
        scale = ops.cast(keep, x.dtype) / ops.cast(1.0 - self.rate, x.dtype)
        return x * ops.reshape(scale, (1,) * (len(x.shape) - 2) + (-1, d))

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, tile_length=self.tile_length, seed=self.seed)
        return config
