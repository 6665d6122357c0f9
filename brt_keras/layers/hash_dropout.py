"""Dropout whose random numbers come from an integer hash (fast under XLA)."""

import keras
from keras import ops

from brt_keras.layers.not_quantized import NotQuantized

# Multipliers of the "lowbias32" integer hash (Chris Wellons' hash prospector)
# and the golden-ratio increment that spreads counters over 32 bits.
_GOLDEN = 0x9E3779B9
_MUL1, _MUL2 = 0x7FEB352D, 0x846CA68B


def _mix(x):
    u32 = "uint32"
    x = ops.bitwise_xor(x, ops.right_shift(x, ops.cast(16, u32)))
    x = x * ops.cast(_MUL1, u32)
    x = ops.bitwise_xor(x, ops.right_shift(x, ops.cast(15, u32)))
    x = x * ops.cast(_MUL2, u32)
    return ops.bitwise_xor(x, ops.right_shift(x, ops.cast(16, u32)))


def hash_uniform(shape, seed):
    """Uniform floats in [0, 1) from a counter-based integer hash.

    `keras.random.uniform` under XLA on CPU with the TensorFlow backend costs
    ~170 ns per number (the stateless default algorithm); dropout masks drawn
    that way cost more than the attention they mask (a [8, 512, 1024] mask:
    1.4 s against 4.6 ms here). Hashing the element index with the seed is
    elementwise integer arithmetic that XLA fuses, gives the same numbers on
    every backend, and is plenty random for dropout (24-bit resolution).

    Args:
        shape: tuple of ints (or scalar tensors).
        seed: `[2]` integer tensor, e.g. `SeedGenerator.next()`.

    Returns:
        float32 tensor of `shape`.
    """
    u32 = "uint32"
    seed = ops.cast(seed, u32)
    size = 1
    for dim in shape:
        size = size * dim
    # XLA has no uint32 iota in TensorFlow: count in int32, then reinterpret.
    x = ops.cast(ops.arange(size, dtype="int32"), u32) * ops.cast(_GOLDEN, u32)
    x = _mix(x + seed[0])
    x = _mix(x + seed[1])
    x = ops.cast(ops.right_shift(x, ops.cast(8, u32)), "float32")
    return ops.reshape(x * (1.0 / (1 << 24)), shape)


@keras.saving.register_keras_serializable(package="brt_keras")
class HashDropout(NotQuantized, keras.layers.Dropout):
    """`keras.layers.Dropout` (same arguments, `noise_shape` included) with
    its mask drawn by `hash_uniform` from the layer's `SeedGenerator`.
    No weights, so nothing to quantize (`NotQuantized`).

    Example:
    >>> layer = HashDropout(0.5, noise_shape=(1, 4), seed=1)
    >>> y = layer(np.ones((2, 4)), training=True)
    >>> bool(np.all(y[0] == y[1])) and set(np.unique(y)) <= {0.0, 2.0}
    True
    """

    def call(self, inputs, training=False, seed=None):
        """`seed`: optional `[2]` int tensor used instead of the next seed of
        the layer's generator (a rematerialised caller draws it once, so the
        recomputation draws the same mask)."""
        if not training or self.rate == 0:
            return inputs
        # As in Keras, a None in noise_shape takes the input's size there.
        shape = ops.shape(inputs)
        if self.noise_shape is not None:
            shape = [s if n is None else n for n, s in zip(self.noise_shape, shape)]
        return inputs * self.keep_scale(tuple(shape), seed, inputs.dtype)

    def keep_scale(self, shape, seed=None, dtype="float32"):
        """The mask `call` multiplies by: `0` or `1 / (1 - rate)` of `shape`.

        For a caller that lays the mask out itself (the sliding-window
        attention cuts one `[H, W, 2W]` mask into its query chunks)."""
        seed = self.seed_generator.next() if seed is None else seed
        keep = hash_uniform(tuple(shape), seed) >= self.rate
        return ops.cast(keep, dtype) / ops.cast(1.0 - self.rate, dtype)
