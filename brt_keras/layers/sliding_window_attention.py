"""Causal sliding-window attention over blocks, with T5 bias."""

import keras
import numpy as np
from keras import ops

from brt_keras.layers.attention_ops import MASK_VALUE
from brt_keras.layers.attention_ops import add_temperature
from brt_keras.layers.attention_ops import attend
from brt_keras.layers.attention_ops import attend_cached
from brt_keras.layers.attention_ops import check_temperature_options
from brt_keras.layers.attention_ops import temperature_value
from brt_keras.layers.hash_dropout import HashDropout
from brt_keras.layers.t5_relative_position_bias import T5RelativePositionBias


def sliding_window_mask(block_size):
    """Boolean `[W, 2W]` tile: query i sees keys j with -W <= j-(i+W) <= -1.

    The queries line up with the last W keys. The diagonal is excluded: a
    token sees exactly the W tokens before it and never itself.
    """
    rel = np.arange(2 * block_size)[None, :] - (
        np.arange(block_size)[:, None] + block_size
    )
    return (rel >= -block_size) & (rel <= -1)


def resolve_query_chunk_size(query_chunk_size, block_size):
    """The number of queries per attention tile for a `query_chunk_size`
    setting: None picks W / 4 for W >= 256 (the fastest or within 1 % of it
    on CPU at W = 512 and 2048, `benchmarks/attention_chunks.py`), else W
    (one `[W, 2W]` tile per block, the reference's layout)."""
    if query_chunk_size is None:
        return (
            block_size // 4 if block_size >= 256 and block_size % 4 == 0 else block_size
        )
    if (
        not isinstance(query_chunk_size, int)
        or query_chunk_size <= 0
        or block_size % query_chunk_size
    ):
        raise ValueError(
            f"query_chunk_size={query_chunk_size!r} must be a positive divisor of "
            f"block_size={block_size} (or None to choose one); e.g. "
            f"{block_size} (one tile per block) or {max(1, block_size // 4)}."
        )
    return query_chunk_size


def query_chunk_windows(x, previous, chunk_size, block_size):
    """The keys (or values) each chunk of `chunk_size` queries can see.

    Args:
        x: `[B, N*W, H, Dh]`, a segment's keys.
        previous: `[B, W, H, Dh]`, the block before the segment.

    Returns:
        `[B, N, W/C, W + C, H, Dh]`: for chunk j of block t, the W + C keys
        that start W tokens before the chunk (the last one lies after every
        query of the chunk and is always masked). With C = W this is the
        reference's tile: the previous block, then the current one.
    """
    b, length, h, dh = ops.shape(x)
    c, w = chunk_size, block_size
    chunks = length // c
    extended = ops.reshape(
        ops.concatenate([previous, x], axis=1), (b, chunks + w // c, c, h, dh)
    )
    # Chunk g's window is stored chunks g .. g + W/C of the extended sequence.
    windows = ops.concatenate(
        [extended[:, i : i + chunks] for i in range(w // c + 1)], axis=2
    )
    return ops.reshape(windows, (b, length // w, w // c, w + c, h, dh))


def chunk_tile(tile, chunk_size, block_size):
    """`[..., W, 2W]` block tile -> `[W/C, ..., C, W + C]` per-chunk tiles
    (chunk j's rows jC..jC+C-1 and the W + C columns from jC)."""
    c, w = chunk_size, block_size
    return ops.stack(
        [tile[..., j * c : (j + 1) * c, j * c : j * c + w + c] for j in range(w // c)]
    )


def check_remat(remat):
    """Validates a `remat` setting: False (the reference: keep every activation),
    True or `"attention"` (recompute each attention core in the backward pass),
    `"layer"` (recompute each sliding-window layer whole from its input; a
    recurrent layer's attention cores as with `"attention"`).

    On JAX's CPU client remat saves memory only when XLA keeps the
    optimization barriers `jax.checkpoint` places
    (`XLA_FLAGS=--xla_disable_hlo_passes=cse_barrier_expander`, which
    `trainers.backend.keep_remat_on_cpu` sets for every trainer and
    benchmark); otherwise XLA:CPU merges the recomputation back into the
    forward pass and keeps every activation. TensorFlow and GPU/TPU need
    nothing."""
    if isinstance(remat, bool) or remat in ("attention", "layer"):
        return remat
    raise ValueError(
        f"remat={remat!r}: choose False, True (= 'attention') or 'layer' "
        "(a string 'true' is not True: write remat=True)."
    )


@keras.saving.register_keras_serializable(package="brt_keras")
class SlidingWindowAttention(keras.layers.Layer):
    """Each token attends to exactly the `block_size` tokens before it.

    A segment of `N * W` tokens is cut into N blocks; block t's queries see
    the keys of blocks t-1 and t through one `[W, 2W]` tile, so all blocks are
    computed at once (no loop). Block 0 reads the previous segment's last
    block from a cache (zeros at a document start, not masked, as the
    reference does).

    Owns the layer's T5 bias table and the per-head temperature (init 1).

    Args:
        num_heads: int.
        block_size: int, W.
        attention_dropout: float, dropout on the attention probabilities; one
            mask `[H, W, 2W]` per call, shared over batch and blocks.
        temperature_init: float, initial temperature (reference: 1.0).
        temperature_parameterization: `"linear"` (reference: the variable is
            the temperature) or `"log"` (the variable is its log).
        temperature_lr_multiplier: float, the variable is stored divided by
            it, so Adam-like updates move the temperature this much faster
            (reference: 1.0). See `attention_ops.add_temperature`.
        remat: False, True, `"attention"` (= True) or `"layer"` (see
            `check_remat`): rematerialise the attention core in training: the
            backward pass recomputes the `[H, W, 2W]` logits, probabilities
            and dropout mask from the queries/keys/values instead of keeping
            them (`keras.remat`: `tf.recompute_grad` / `jax.checkpoint`).
            Same outputs and gradients; one more forward pass of the core,
            much less memory at large W (`xl_2048`). Default False (the
            reference keeps them). A caller that rematerialises a whole layer
            passes `seed` instead, and the core is then computed plainly.
        query_chunk_size: int dividing W, or None (default: W / 4 for
            W >= 256, else W). Queries are scored in chunks of C against
            the W + C keys their windows span instead of a block's 2W, so the
            tiles hold (W + C) / 2W of the logits (0.625 at W = 512) and
            skip work that the mask throws away. The same function to float
            round-off, dropout included (one `[H, W, 2W]` mask per call, cut
            into the chunks); C = W is the reference's `[W, 2W]` tile.

    Call arguments:
        queries, keys, values: `[B, N*W, H, Dh]` (queries/keys normalised).
        previous_keys, previous_values: `[B, W, H, Dh]`.
        seed: optional `[2]` int tensor for the dropout mask, drawn by a
            caller that rematerialises the whole layer (no nested remat).

    Returns:
        `[B, N*W, H, Dh]`.
    """

    def __init__(
        self,
        num_heads,
        block_size,
        attention_dropout=0.0,
        temperature_init=1.0,
        temperature_parameterization="linear",
        temperature_lr_multiplier=1.0,
        remat=False,
        query_chunk_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        resolve_query_chunk_size(query_chunk_size, block_size)
        check_temperature_options(
            temperature_init, temperature_parameterization, temperature_lr_multiplier
        )
        self.num_heads = num_heads
        self.block_size = block_size
        self.attention_dropout = attention_dropout
        self.temperature_init = temperature_init
        self.temperature_parameterization = temperature_parameterization
        self.temperature_lr_multiplier = temperature_lr_multiplier
        self.remat = check_remat(remat)
        self.query_chunk_size = query_chunk_size
        self.relative_bias = T5RelativePositionBias(
            num_heads, dtype=self.dtype_policy, name="relative_positions"
        )
        self.temperature = add_temperature(
            self,
            "attention_scale",
            num_heads,
            temperature_init,
            temperature_parameterization,
            temperature_lr_multiplier,
        )
        self.dropout = HashDropout(
            attention_dropout,
            noise_shape=(1, 1, num_heads, block_size, 2 * block_size),
            dtype=self.dtype_policy,
        )
        self.built = True

    def effective_temperature(self):
        """The per-head temperature `[H]` the attention uses."""
        return temperature_value(
            self.temperature,
            self.temperature_parameterization,
            self.temperature_lr_multiplier,
        )

    def call(
        self,
        queries,
        keys,
        values,
        previous_keys,
        previous_values,
        training=None,
        seed=None,
    ):
        args = (queries, keys, values, previous_keys, previous_values)
        dropout = bool(training) and self.attention_dropout > 0
        if seed is not None or not (self.remat and training):
            return self._core(*args, seed=seed, dropout=dropout)
        # The dropout seed is drawn here, outside the recomputed function, so
        # the backward pass recomputes the very same mask.
        seed = self.dropout.seed_generator.next() if dropout else ops.zeros((2,))

        def core(queries, keys, values, previous_keys, previous_values, seed):
            return self._core(
                queries, keys, values, previous_keys, previous_values, seed, dropout
            )

        return keras.remat(core)(*args, seed)

    def _core(
        self, queries, keys, values, previous_keys, previous_values, seed, dropout
    ):
        b, length, h, dh = ops.shape(queries)
        w = self.block_size
        c = resolve_query_chunk_size(self.query_chunk_size, w)
        # Block t's chunk j holds queries jC .. jC+C-1; it reads the W + C
        # keys from W tokens before it (block t-1's, the cache's for t = 0).
        # All chunks of all blocks at once: leading axes [B, N, W/C].
        k2 = query_chunk_windows(keys, previous_keys, c, w)
        v2 = query_chunk_windows(values, previous_values, c, w)
        # Bias and mask depend on (query, key) distance only, so chunk 0's
        # tile serves every chunk.
        bias = self.relative_bias.tile(c, w + c)
        mask = ops.convert_to_tensor(sliding_window_mask(w)[:c, : w + c])
        drop = None
        if dropout:
            # The reference draws one [H, W, 2W] mask per call, shared over
            # batch and blocks; each chunk takes its rows and columns of it.
            scale = chunk_tile(self.dropout.keep_scale((h, w, 2 * w), seed), c, w)

            def drop(weights, training):
                return weights * ops.cast(scale, weights.dtype)

        out = attend(
            ops.reshape(queries, (b, length // w, w // c, c, h, dh)),
            k2,
            v2,
            self.effective_temperature(),
            bias=bias,
            mask=mask,
            dropout=drop,
            training=dropout,
        )
        return ops.reshape(out, (b, length, h, dh))

    def attend_ring(self, query, keys, values, slot):
        """One decoding step against a window ring of W + 1 slots.

        Args:
            query: `[B, 1, H, Dh]`, the token that goes to `slot`.
            keys, values: `[B, H, W + 1, Dh]` (head-major): in the slots
                before `slot` (cyclically), the W tokens before it. Slot
                `slot` is masked: it holds the token itself or the one W + 1
                back, and a token never attends to itself (the reference's
                mask excludes the diagonal), so the ring may be read before
                or after the token is written.
            slot: scalar int32 tensor.
        """
        w = self.block_size
        # Slot s holds the token (slot - s) mod (W + 1) positions back.
        distances = ops.mod(slot - ops.arange(w + 1, dtype="int32"), w + 1)
        temperature = ops.cast(self.effective_temperature(), "float32")
        bias = ops.cast(self.relative_bias.row(distances, w), "float32")
        tile = ops.where(
            ops.equal(distances, 0), MASK_VALUE, bias * temperature[:, None]
        )
        return attend_cached(query, [(keys, values)], temperature, tile[:, None])

    def attend_row(self, query, keys, values, index, half):
        """One decoding step.

        Args:
            query: `[B, 1, H, Dh]`, the token at position `index` (int or
                scalar tensor) of the current block.
            keys, values: the decode ring `[B, H, 2W, Dh]` (head-major): the
                current block's buffer in half `half`, the previous block in
                the other half. Slots `index` and after in the current half
                are masked: the caller writes this token's key/value into
                slot `index` after the call (a token never sees itself).
            half: scalar int, 0 or 1.
        """
        w = self.block_size
        row = ops.reshape(ops.convert_to_tensor(index, "int32"), (1,))
        temperature = ops.cast(self.effective_temperature(), "float32")
        bias = ops.cast(self.relative_bias.tile(w, 2 * w, rows=row), "float32")
        mask = ops.take(ops.convert_to_tensor(sliding_window_mask(w)), row, axis=0)
        # `[H, 1, 2W]` for keys in time order (previous block, current);
        # in the ring the current block may come first.
        tile = ops.where(mask, bias * ops.reshape(temperature, (-1, 1, 1)), MASK_VALUE)
        tile = ops.where(
            ops.equal(half, 1),
            tile,
            ops.concatenate([tile[..., w:], tile[..., :w]], axis=-1),
        )
        return attend_cached(query, [(keys, values)], temperature, tile)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            block_size=self.block_size,
            attention_dropout=self.attention_dropout,
            temperature_init=self.temperature_init,
            temperature_parameterization=self.temperature_parameterization,
            temperature_lr_multiplier=self.temperature_lr_multiplier,
            remat=self.remat,
            query_chunk_size=self.query_chunk_size,
        )
        return config
