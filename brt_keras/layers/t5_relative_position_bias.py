"""T5 relative position bias for one (queries x keys) sliding-window tile."""

import math

import keras
import numpy as np
from keras import ops

from brt_keras.layers.not_quantized import NotQuantized


def relative_position_buckets(num_queries, num_keys, num_buckets=32, max_distance=128):
    """Unidirectional T5 buckets, queries aligned with the *last* keys.

    Query i and key j have relative position r = j - (i + num_keys -
    num_queries). Distances n = max(-r, 0) below num_buckets // 2 get their
    own bucket; larger ones are log-spaced up to `max_distance`, beyond which
    everything shares the last bucket. Computed in float32 numpy like T5.

    Returns:
        int32 numpy array `[num_queries, num_keys]`.
    """
    offset = num_keys - num_queries
    rel = np.arange(num_keys)[None, :] - (np.arange(num_queries)[:, None] + offset)
    n = np.maximum(-rel, 0)
    max_exact = num_buckets // 2
    eps = np.finfo(np.float32).eps
    with np.errstate(divide="ignore"):
        large = max_exact + (
            np.log(n.astype(np.float32) / max_exact + eps)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).astype(np.int32)
    large = np.minimum(large, num_buckets - 1)
    return np.where(n < max_exact, n, large).astype(np.int32)


def distance_buckets(max_n, num_buckets=32, max_distance=128):
    """The bucket of each distance n = 0 .. max_n (a key n tokens before its
    query), as `relative_position_buckets` assigns it: int32 `[max_n + 1]`."""
    row = relative_position_buckets(1, max_n + 1, num_buckets, max_distance)[0]
    return row[::-1].copy()  # the last key is at distance 0


@keras.saving.register_keras_serializable(package="brt_keras")
class T5RelativePositionBias(NotQuantized, keras.layers.Layer):
    """Learned per-head bias indexed by bucketed relative distance.

    One table of shape `[num_heads, num_buckets]` per layer (never shared),
    initialised like Flax's `default_embed_init` (normal, std
    `1 / sqrt(num_buckets)`). Stays in float32 under `Model.quantize`
    (`NotQuantized`): 32 numbers per head, read once per attention tile.

    Args:
        num_heads: int, attention heads.
        num_buckets: int, 32 in the reference (hard-coded there).
        max_distance: int, 128 in the reference.

    Example:
    >>> bias = T5RelativePositionBias(num_heads=4)
    >>> bias.tile(8, 16).shape  # [heads, queries, keys]
    (4, 8, 16)
    """

    def __init__(self, num_heads, num_buckets=32, max_distance=128, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.rel_embedding = self.add_weight(
            name="rel_embedding",
            shape=(num_heads, num_buckets),
            initializer=keras.initializers.RandomNormal(
                stddev=1.0 / math.sqrt(num_buckets)
            ),
            dtype="float32",
        )
        self.built = True

    def tile(self, num_queries, num_keys, rows=None):
        """Bias `[num_heads, num_queries, num_keys]` for one attention tile.

        `rows`: optional int32 `[R]` query indices; returns only those rows,
        `[num_heads, R, num_keys]` (one decoding step needs one row, and the
        whole tile would cost W times more).
        """
        buckets = ops.convert_to_tensor(
            relative_position_buckets(
                num_queries, num_keys, self.num_buckets, self.max_distance
            )
        )
        if rows is not None:
            buckets = ops.take(buckets, rows, axis=0)
        return ops.take(self.rel_embedding, buckets, axis=1)

    def row(self, distances, max_n):
        """Bias `[num_heads, K]` for keys at `distances` (int32 `[K]`, each in
        0 .. `max_n`) before one query: a decoding step whose keys sit in a
        ring, out of time order."""
        table = ops.convert_to_tensor(
            distance_buckets(max_n, self.num_buckets, self.max_distance)
        )
        return ops.take(self.rel_embedding, ops.take(table, distances), axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        return config
