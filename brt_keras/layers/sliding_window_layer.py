"""The ordinary pre-norm sliding-window transformer layer."""

import keras
from keras import ops

from brt_keras.layers.attention_ops import add_temperature
from brt_keras.layers.attention_ops import attend
from brt_keras.layers.attention_ops import attend_cached
from brt_keras.layers.attention_ops import l2_normalize
from brt_keras.layers.attention_ops import merge_heads
from brt_keras.layers.attention_ops import temperature_value
from brt_keras.layers.rms_norm import RMSNorm
from brt_keras.layers.sliding_window_attention import SlidingWindowAttention
from brt_keras.layers.sliding_window_attention import check_remat
from brt_keras.layers.tiled_dropout import TiledDropout
from brt_keras.layers.token_dense import TokenDense


def dense_initializer(scale=1.0):
    """variance_scaling(scale, fan_in, truncated_normal), as the reference."""
    return keras.initializers.VarianceScaling(scale, "fan_in", "truncated_normal")


def reset_where(start_of_sequence, fresh, carried):
    """Per-slot select: `fresh` where `start_of_sequence[b]`, else `carried`."""
    if start_of_sequence is None:
        return carried
    sos = ops.convert_to_tensor(start_of_sequence, "bool")
    sos = ops.reshape(sos, (-1,) + (1,) * (len(carried.shape) - 1))
    return ops.where(sos, ops.cast(fresh, carried.dtype), carried)


@keras.saving.register_keras_serializable(package="brt_keras")
class SlidingWindowLayer(keras.layers.Layer):
    """Pre-norm transformer layer with causal sliding-window attention.

    `y = h + FFN(RMSNorm(h))`, `h = x + Dense([SWA(x) ; CA(x)])`, where SWA is
    `SlidingWindowAttention` over blocks of `block_size` tokens and CA, only
    with `cross_attention=True` (the feedback variant), attends from a second
    query projection to externally supplied state keys/values. No biases
    anywhere; q/k L2-normalised with learned temperatures.

    The layer state is a dict `{"keys", "values"}` of `[B, W, H, Dh]`: the
    projected keys (normalised) and values of the previous segment's last
    block, zeros at a document start.

    Args:
        hidden_dim: int, d.
        num_heads: int, H.
        head_dim: int, Dh.
        intermediate_dim: int, F, FFN width.
        block_size: int, W.
        cross_attention: bool, add the cross-attention to a recurrent state.
        dropout: float, dropout before attention and after the FFN.
        attention_dropout: float, dropout on attention probabilities.
        temperature_init, temperature_parameterization,
            temperature_lr_multiplier: every attention temperature's
            initial value and parameterization (reference: 1.0, "linear",
            1.0); see `attention_ops.add_temperature`.
        remat, query_chunk_size: how the attention core is computed in
            training (same values); see `SlidingWindowAttention`.

    Example:
    >>> layer = SlidingWindowLayer(64, 4, 16, 128, block_size=8)
    >>> x = keras.random.normal((2, 32, 64))
    >>> y, state = layer.call_with_state(x, layer.get_initial_state(2))
    >>> y.shape, state["keys"].shape
    ((2, 32, 64), (2, 8, 4, 16))
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        head_dim,
        intermediate_dim,
        block_size,
        cross_attention=False,
        dropout=0.0,
        attention_dropout=0.0,
        temperature_init=1.0,
        temperature_parameterization="linear",
        temperature_lr_multiplier=1.0,
        remat=False,
        query_chunk_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.temperature_init = temperature_init
        self.temperature_parameterization = temperature_parameterization
        self.temperature_lr_multiplier = temperature_lr_multiplier
        self.remat = check_remat(remat)
        self.query_chunk_size = query_chunk_size
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.block_size = block_size
        self.cross_attention = cross_attention
        self.dropout = dropout
        self.attention_dropout = attention_dropout

        def dense(units, name, activation=None):
            return TokenDense(
                units,
                activation=activation,
                use_bias=False,
                kernel_initializer=dense_initializer(),
                dtype=self.dtype_policy,
                name=name,
            )

        def norm(name):
            return RMSNorm(epsilon=1e-6, dtype=self.dtype_policy, name=name)

        width = num_heads * head_dim
        self.pre_attn_norm = norm("pre_attn_layernorm")
        self.query_dense = dense(width, "queries_layer")
        self.key_dense = dense(width, "keys_layer")
        self.value_dense = dense(width, "values_layer")
        self.self_attention = SlidingWindowAttention(
            num_heads,
            block_size,
            attention_dropout,
            temperature_init=temperature_init,
            temperature_parameterization=temperature_parameterization,
            temperature_lr_multiplier=temperature_lr_multiplier,
            remat=remat,
            query_chunk_size=query_chunk_size,
            dtype=self.dtype_policy,
            name="self_attention",
        )
        if cross_attention:
            self.query2_dense = dense(width, "queries2_layer")
            self.temperature2 = add_temperature(
                self,
                "attention_scale2",
                num_heads,
                temperature_init,
                temperature_parameterization,
                temperature_lr_multiplier,
            )
        self.output_dense = dense(hidden_dim, "output_layer")
        self.ffn_norm = norm("pre_ffn_layernorm")
        self.ffn_hidden = dense(intermediate_dim, "ffn_hidden0", "relu")
        self.ffn_output = dense(hidden_dim, "ffn_output_layer")
        self.pre_attn_dropout = TiledDropout(dropout, dtype=self.dtype_policy)
        self.ffn_dropout = TiledDropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        width = self.num_heads * self.head_dim
        shape = tuple(input_shape[:-1]) + (self.hidden_dim,)
        self.pre_attn_norm.build(shape)
        for layer in self._query_key_value_layers():
            layer.build(shape)
        cat = (2 if self.cross_attention else 1) * width
        self.output_dense.build(tuple(input_shape[:-1]) + (cat,))
        self.ffn_norm.build(shape)
        self.ffn_hidden.build(shape)
        self.ffn_output.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def _query_key_value_layers(self):
        layers = [self.query_dense, self.key_dense, self.value_dense]
        return layers + ([self.query2_dense] if self.cross_attention else [])

    # --- pieces shared with BlockRecurrentCell and decoding -----------------

    def _heads(self, x):
        shape = ops.shape(x)
        return ops.reshape(x, tuple(shape[:-1]) + (self.num_heads, self.head_dim))

    def project(self, x, training=None, seed=None):
        """Returns normalised queries, keys, values (and queries2 or None),
        each `[B, T, H, Dh]`. `seed`: the input dropout's, if drawn already."""
        u = self.pre_attn_dropout(self.pre_attn_norm(x), training=training, seed=seed)
        q = l2_normalize(self._heads(self.query_dense(u)))
        k = l2_normalize(self._heads(self.key_dense(u)))
        v = self._heads(self.value_dense(u))
        q2 = None
        if self.cross_attention:
            q2 = l2_normalize(self._heads(self.query2_dense(u)))
        return q, k, v, q2

    def cross_attend(self, queries2, state_kv):
        """Tokens -> recurrent state attention (no mask, no bias)."""
        state_keys, state_values = state_kv
        return attend(
            queries2,
            ops.cast(state_keys, queries2.dtype),
            ops.cast(state_values, queries2.dtype),
            temperature_value(
                self.temperature2,
                self.temperature_parameterization,
                self.temperature_lr_multiplier,
            ),
        )

    def cross_attend_cached(self, queries2, state_kv):
        """`cross_attend` for one decoding step, reading the decode cache's
        head-major state keys/values (flat `[B, H * S * Dh]`,
        `BlockRecurrentLayer.decode_state_kv`) where they lie; the
        token-major form made XLA transpose both every token (at batch 32
        two 32 MiB copies per step for `small_37m`)."""
        batch = ops.shape(queries2)[0]
        shape = (batch, self.num_heads, -1, self.head_dim)
        return attend_cached(
            queries2,
            [tuple(ops.reshape(t, shape) for t in state_kv)],
            temperature_value(
                self.temperature2,
                self.temperature_parameterization,
                self.temperature_lr_multiplier,
            ),
            None,
        )

    def finish(self, x, self_out, cross_out=None, training=None, seed=None):
        """Head concat, output projection, residual, FFN, residual. `seed`: the
        FFN dropout's, if drawn already."""
        heads = merge_heads(self_out)
        if cross_out is not None:
            heads = ops.concatenate([heads, merge_heads(cross_out)], axis=-1)
        h = x + self.output_dense(heads)
        z = self.ffn_output(self.ffn_hidden(self.ffn_norm(h)))
        return h + self.ffn_dropout(z, training=training, seed=seed)

    # --- public API ---------------------------------------------------------

    def get_initial_state(self, batch_size):
        shape = (batch_size, self.block_size, self.num_heads, self.head_dim)
        return {"keys": ops.zeros(shape), "values": ops.zeros(shape)}

    def _check_length(self, x):
        length = x.shape[1]
        if length is not None and length % self.block_size:
            raise ValueError(
                f"{self.name}: sequence length {length} is not a multiple of "
                f"block_size={self.block_size}. Pad the input to a multiple of "
                f"{self.block_size} (pad id 0 is masked in the loss) or choose "
                "a segment length that is one."
            )

    def call_with_state(
        self, x, state, start_of_sequence=None, state_kv=None, training=None
    ):
        """Runs a segment `[B, N*W, d]` from a carried state.

        Args:
            x: `[B, N*W, d]` hidden activations.
            state: dict `{"keys", "values"}`, each `[B, W, H, Dh]`.
            start_of_sequence: optional bool `[B]`; slots where True start
                from a zero cache.
            state_kv: `(keys, values)` `[B, S, H, Dh]` of a recurrent state,
                required iff `cross_attention`.

        Returns:
            `(y [B, N*W, d], new_state)`.
        """
        self._check_length(x)
        if self.cross_attention != (state_kv is not None):
            raise ValueError(
                f"{self.name}: cross_attention={self.cross_attention} needs "
                "state_kv " + ("" if self.cross_attention else "not ") + "given."
            )
        x = ops.cast(x, self.compute_dtype)
        prev_k = reset_where(start_of_sequence, 0.0, state["keys"])
        prev_v = reset_where(start_of_sequence, 0.0, state["values"])
        kv = list(state_kv) if state_kv is not None else []
        if self.remat == "layer" and training:
            # Every dropout's seed is drawn here, outside the recomputed
            # function, so the backward pass recomputes the very same masks.
            # (keras' Dropout has no generator at rate 0: zeros stand in.)
            dtype = self.pre_attn_dropout.seed_generator.state.dtype

            def draw(d):
                return d.seed_generator.next() if d.rate > 0 else ops.zeros((2,), dtype)

            dropouts = (self.pre_attn_dropout, self.self_attention.dropout)
            seeds = ops.stack([draw(d) for d in dropouts + (self.ffn_dropout,)])

            def layer(x, prev_k, prev_v, seeds, *kv):
                return self._segment(x, prev_k, prev_v, kv, True, seeds)

            y, k_last, v_last = keras.remat(layer)(x, prev_k, prev_v, seeds, *kv)
        else:
            y, k_last, v_last = self._segment(x, prev_k, prev_v, kv, training)
        new_state = {
            "keys": ops.cast(k_last, "float32"),
            "values": ops.cast(v_last, "float32"),
        }
        return y, new_state

    def _segment(self, x, prev_k, prev_v, state_kv, training, seeds=(None,) * 3):
        """The layer on one segment: `(y, last block's keys, values)`."""
        q, k, v, q2 = self.project(x, training=training, seed=seeds[0])
        self_out = self.self_attention(
            q,
            k,
            v,
            ops.cast(prev_k, k.dtype),
            ops.cast(prev_v, v.dtype),
            training=training,
            seed=seeds[1],
        )
        cross_out = self.cross_attend(q2, state_kv) if state_kv else None
        y = self.finish(x, self_out, cross_out, training=training, seed=seeds[2])
        w = self.block_size
        return y, k[:, -w:], v[:, -w:]

    def call(self, x, training=None):
        batch = ops.shape(x)[0]
        y, _ = self.call_with_state(x, self.get_initial_state(batch), training=training)
        return y

    def decode_cache(self, keys, values, keep_previous_block=False):
        """Decoding cache from the last complete block's keys/values
        `[B, W, H, Dh]` (a stream state's `keys`/`values`).

        Keys and values live in float32 rings, head-major so that a step
        reads them in place (`attention_ops.attend_cached`) and writes one
        slot; nothing is copied per token or when a block ends.

        - By default a window ring of W + 1 slots: a token sees exactly the
          W tokens before it, so a slot is reused W + 1 tokens after it was
          written. `slot` (`[B]` int32) is where the next token goes.
          Batched decoding reads each slot's cache once per token (the
          weights once per batch), so its size bounds batched throughput.
        - `keep_previous_block=True` (the recurrent layer, whose state update
          reads the previous and the current block: 2W keys): a ring of 2W,
          the current block writes the half `half` (`[B]` int32) names, the
          other half holds the previous block; `end_block` flips `half`.
        """
        keys = ops.cast(ops.swapaxes(keys, 1, 2), "float32")
        values = ops.cast(ops.swapaxes(values, 1, 2), "float32")
        batch = ops.shape(keys)[0]
        if not keep_previous_block:
            # The previous block in slots 0 .. W-1, its tokens in order; the
            # next token (position 0 of a block) goes to slot W.
            pad = ops.zeros_like(keys[:, :, :1])
            return {
                "keys": ops.concatenate([keys, pad], axis=2),
                "values": ops.concatenate([values, pad], axis=2),
                "slot": ops.full((batch,), self.block_size, "int32"),
            }
        return {
            # Previous block in the second half, the current block writes the first.
            "keys": ops.concatenate([ops.zeros_like(keys), keys], axis=2),
            "values": ops.concatenate([ops.zeros_like(values), values], axis=2),
            "half": ops.zeros((batch,), "int32"),
        }

    def decode_step(self, x, cache, index, state_kv=None):
        """Processes one token `x [B, 1, d]` at position `index` of its block.

        `cache` is a `decode_cache` ring (a window ring keeps its own
        `slot`; `index` places the token in a 2W ring); `state_kv` the
        recurrent state's keys/values head-major, flat `[B, H * S * Dh]`
        float32 (as the decode cache holds them), or None. Returns
        `(y [B, 1, d], new_cache)`; the cost does not depend on how many
        tokens came before.
        """
        x = ops.cast(x, self.compute_dtype)
        q, k, v, q2 = self.project(x)
        w = self.block_size
        if "half" in cache:
            slot = cache["half"][0] * w + ops.convert_to_tensor(index, "int32")
        else:
            slot = cache["slot"][0]
        # Attend to the ring as it was, then write it. The slot written now is
        # masked either way (a token never sees itself; the slot held the
        # token W + 1 back, or one from the block before last), so the result
        # is the same. Reading the written ring made XLA compute the write
        # twice (for the attention and for the loop carry) and copy the whole
        # ring three times per token (batch 1: 19.4 -> 12.6 ms per token).
        if "half" in cache:
            self_out = self.self_attention.attend_row(
                q, cache["keys"], cache["values"], index, cache["half"][0]
            )
        else:
            self_out = self.self_attention.attend_ring(
                q, cache["keys"], cache["values"], slot
            )
        start = (0, 0, slot, 0)
        # `+ 0 * self_out` (exact) makes the write depend on the attention,
        # so XLA orders every read of the ring before it and writes in place;
        # without it XLA copies the rings each token (batch 32: 2.3x slower).
        after_reads = ops.multiply(self_out, 0.0)
        k = k + after_reads
        v = v + after_reads
        keys = ops.slice_update(
            cache["keys"], start, ops.cast(ops.swapaxes(k, 1, 2), "float32")
        )
        values = ops.slice_update(
            cache["values"], start, ops.cast(ops.swapaxes(v, 1, 2), "float32")
        )
        new_cache = dict(cache, keys=keys, values=values)
        if "slot" in cache:
            new_cache["slot"] = ops.mod(cache["slot"] + 1, w + 1)
        cross_out = None
        if state_kv is not None:
            cross_out = self.cross_attend_cached(q2, state_kv)
        y = self.finish(x, self_out, cross_out)
        return y, new_cache

    def block_keys_values(self, cache):
        """The ring in time order, previous block first: `[B, 2W, H, Dh]`
        keys and values (what the recurrent cell reads at a block's end;
        needs `decode_cache(..., keep_previous_block=True)`)."""
        w = self.block_size
        out = []
        for ring in (cache["keys"], cache["values"]):
            ordered = ops.where(
                ops.equal(cache["half"][0], 1),
                ring,
                ops.concatenate([ring[:, :, w:], ring[:, :, :w]], axis=2),
            )
            out.append(ops.swapaxes(ordered, 1, 2))
        return out

    def end_block(self, cache, when=None):
        """After the W-th token of a block: the block just written becomes
        the previous one and the next block writes the other half. `when`:
        optional scalar bool tensor; the ring flips only where it is true
        (a select on one integer, not a branch over the cache). A window
        ring needs nothing: it has no blocks."""
        if "half" not in cache:
            return cache
        half = cache["half"]
        flipped = 1 - half
        return dict(
            cache, half=flipped if when is None else ops.where(when, flipped, half)
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            intermediate_dim=self.intermediate_dim,
            block_size=self.block_size,
            cross_attention=self.cross_attention,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            temperature_init=self.temperature_init,
            temperature_parameterization=self.temperature_parameterization,
            temperature_lr_multiplier=self.temperature_lr_multiplier,
            remat=self.remat,
            query_chunk_size=self.query_chunk_size,
        )
        return config
