"""A `BlockRecurrentCell` run over the blocks of a segment."""

import keras
from keras import ops

from brt_keras.layers.block_recurrent_cell import BlockRecurrentCell
from brt_keras.layers.block_rnn import BlockRNN
from brt_keras.layers.sliding_window_layer import reset_where


@keras.saving.register_keras_serializable(package="brt_keras")
class BlockRecurrentLayer(keras.layers.Layer):
    """The recurrent layer of the stack: `BlockRNN(BlockRecurrentCell)`.

    Takes and returns whole segments `[B, N*W, d]`; the state is a dict
    `{"recurrent_state": [B, S, d], "keys", "values": [B, W, H, Dh]}` carried
    between segments. Gradients cross the N blocks inside a segment; the
    caller stops them at segment boundaries.

    Args:
        Same as `BlockRecurrentCell`, plus
        unroll: bool. True (the reference's default; needed for dropout
            under JAX): the token side (projections, sliding-window
            attention, output projection, FFN) runs once over the whole
            segment, as in the reference, and only the state update and
            the tokens' cross-attention inputs run block by block, unrolled.
            False: `BlockRNN(cell)`, a `while_loop`/`scan` with one whole
            block per step (what an export with a symbolic segment length
            needs; dropout masks are then drawn per block). Both give the
            same values.

    Example:
    >>> layer = BlockRecurrentLayer(64, 4, 16, 128, block_size=8, num_states=8)
    >>> x = keras.random.normal((2, 32, 64))
    >>> y, state = layer.call_with_state(x, layer.get_initial_state(2))
    >>> state["recurrent_state"].shape
    (2, 8, 64)
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        head_dim,
        intermediate_dim,
        block_size,
        num_states,
        gate_type="fixed",
        gate_variant="skip",
        dropout=0.0,
        attention_dropout=0.0,
        unroll=True,
        temperature_init=1.0,
        temperature_parameterization="linear",
        temperature_lr_multiplier=1.0,
        remat=False,
        query_chunk_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.block_size = block_size
        self.num_states = num_states
        self.gate_type = gate_type
        self.gate_variant = gate_variant
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.unroll = unroll
        self.temperature_init = temperature_init
        self.temperature_parameterization = temperature_parameterization
        self.temperature_lr_multiplier = temperature_lr_multiplier
        self.remat = remat
        self.query_chunk_size = query_chunk_size
        policy = self.dtype_policy
        mixed = policy.compute_dtype != "float32"
        # The cell (hence the RNN's state casts) runs in float32 so the state
        # is carried in float32 under a mixed policy; its token side does not.
        token_dtype = policy.name if mixed else None
        cell_dtype = "float32"
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            # A quantized model reloaded from its config: the map names the
            # quantized sublayers by path, so the cell gets the same entries
            # with a float32 default (and its token side the map itself).
            cell_dtype = keras.dtype_policies.DTypePolicyMap(
                "float32", dict(policy._policy_map)
            )
            token_dtype = policy if mixed else cell_dtype
        self.cell = BlockRecurrentCell(
            hidden_dim,
            num_heads,
            head_dim,
            intermediate_dim,
            block_size,
            num_states,
            gate_type=gate_type,
            gate_variant=gate_variant,
            dropout=dropout,
            attention_dropout=attention_dropout,
            token_dtype=token_dtype,
            temperature_init=temperature_init,
            temperature_parameterization=temperature_parameterization,
            temperature_lr_multiplier=temperature_lr_multiplier,
            remat=remat,
            query_chunk_size=query_chunk_size,
            dtype=cell_dtype,
            name="cell",
        )
        self.rnn = BlockRNN(
            self.cell,
            return_sequences=True,
            return_state=True,
            unroll=unroll,
            dtype="float32",
            name="rnn",
        )

    def build(self, input_shape):
        self.cell.build((input_shape[0], self.block_size, self.hidden_dim))
        self.built = True

    def get_initial_state(self, batch_size):
        state, keys, values = self.cell.get_initial_state(batch_size)
        return {"recurrent_state": state, "keys": keys, "values": values}

    def state_kv(self, state):
        """Keys/values of `state["recurrent_state"]` for cross-attention."""
        return self.cell.state_kv(state["recurrent_state"])

    def decode_state_kv(self, recurrent_state):
        """`state_kv` as the decode cache keeps it: head-major and flat,
        `[B, H * S * Dh]` float32, so each decoding step reads it in place.

        Flat, because XLA picks the physical layout of a 4-D loop carry
        itself: given `[B, H, S, Dh]` it kept the tensor token-major (which
        makes the once-per-block transpose free) and converted it on every
        token. A reshape of the transposed tensor fixes the order in
        memory."""
        rk, rv = self.cell.state_kv(recurrent_state)
        batch = ops.shape(rk)[0]
        return tuple(
            ops.reshape(ops.swapaxes(ops.cast(t, "float32"), 1, 2), (batch, -1))
            for t in (rk, rv)
        )

    def reset(self, state, start_of_sequence):
        """Per-slot reset to the learned initial state and zero caches."""
        if start_of_sequence is None:
            return state
        batch = ops.shape(state["keys"])[0]
        fresh = self.get_initial_state(batch)
        return {
            name: reset_where(start_of_sequence, fresh[name], value)
            for name, value in state.items()
        }

    def call_with_state(
        self,
        x,
        state,
        start_of_sequence=None,
        training=None,
        return_all_states=False,
    ):
        """Runs a segment; returns `(y, new_state)`.

        With `return_all_states`, `new_state["all_recurrent_states"]` holds the
        state after every block, `[B, N, S, d]`.
        """
        self.cell.token_layer._check_length(x)
        state = self.reset(state, start_of_sequence)
        if self.unroll:
            return self._segment_call(x, state, training, return_all_states)
        b, length, d = ops.shape(x)
        n = length // self.block_size
        blocks = ops.reshape(x, (b, n, self.block_size, d))
        initial = [state["recurrent_state"], state["keys"], state["values"]]
        if return_all_states:
            outputs, all_states = [], []
            for t in range(n):
                y_t, initial = self.cell(blocks[:, t], initial, training=training)
                outputs.append(y_t)
                all_states.append(initial[0])
            y = ops.stack(outputs, axis=1)
        else:
            y, *initial = self.rnn(blocks, initial_state=initial, training=training)
        new_state = {
            "recurrent_state": initial[0],
            "keys": initial[1],
            "values": initial[2],
        }
        if return_all_states:
            new_state["all_recurrent_states"] = ops.stack(all_states, axis=1)
        y = ops.cast(ops.reshape(y, (b, length, d)), self.compute_dtype)
        return y, new_state

    def _segment_call(self, x, state, training, return_all_states):
        """The cell's arithmetic reordered: everything that does not depend
        on the recurrent state runs once over the segment; the loop over
        blocks only updates the state and records, for each block, the keys
        and values of the state its tokens read."""
        cell, tokens = self.cell, self.cell.token_layer
        b, length, d = ops.shape(x)
        w = self.block_size
        n = length // w
        x = ops.cast(x, tokens.compute_dtype)
        q, k, v, q2 = tokens.project(x, training=training)
        prev_k = ops.cast(state["keys"], k.dtype)
        prev_v = ops.cast(state["values"], v.dtype)
        self_out = tokens.self_attention(q, k, v, prev_k, prev_v, training=training)
        h, dh = self.num_heads, self.head_dim
        k_blocks = ops.reshape(k, (b, n, w, h, dh))
        v_blocks = ops.reshape(v, (b, n, w, h, dh))
        recurrent = state["recurrent_state"]
        state_keys, state_values, all_states = [], [], []
        for t in range(n):
            projected = cell.project_state(ops.cast(recurrent, "float32"))
            state_keys.append(projected[1])
            state_values.append(projected[2])
            k_t, v_t = k_blocks[:, t], v_blocks[:, t]
            recurrent = cell.update_state(
                recurrent,
                ops.concatenate([prev_k, k_t], axis=1),
                ops.concatenate([prev_v, v_t], axis=1),
                projected,
            )
            prev_k, prev_v = k_t, v_t
            all_states.append(recurrent)
        # Tokens of block t read the incoming state s_t.
        cross_out = tokens.cross_attend(
            ops.reshape(q2, (b, n, w, h, dh)),
            (ops.stack(state_keys, axis=1), ops.stack(state_values, axis=1)),
        )
        cross_out = ops.reshape(cross_out, (b, length, h, dh))
        y = tokens.finish(x, self_out, cross_out, training=training)
        new_state = {
            "recurrent_state": recurrent,
            "keys": ops.cast(prev_k, "float32"),
            "values": ops.cast(prev_v, "float32"),
        }
        if return_all_states:
            new_state["all_recurrent_states"] = ops.stack(all_states, axis=1)
        return ops.cast(y, self.compute_dtype), new_state

    def call(self, x, training=None):
        y, _ = self.call_with_state(
            x, self.get_initial_state(ops.shape(x)[0]), training=training
        )
        return y

    def decode_step(self, x, cache, index):
        """One token through the token side, reading the cached state
        keys/values; `end_block` later updates the state."""
        return self.cell.token_layer.decode_step(
            x, cache, index, state_kv=(cache["state_keys"], cache["state_values"])
        )

    def update_recurrent(self, cache):
        """At a block's end: the new recurrent state and its keys/values
        from the block's (and the previous block's) cached keys/values."""
        block_keys, block_values = self.cell.token_layer.block_keys_values(cache)
        state = self.cell.update_state(
            cache["recurrent_state"], block_keys, block_values
        )
        rk, rv = self.decode_state_kv(state)
        return {"recurrent_state": state, "state_keys": rk, "state_values": rv}

    def end_block(self, cache):
        """After the W-th token of a block: update the state from the full
        block and roll the key/value buffers."""
        cache = dict(cache, **self.update_recurrent(cache))
        return self.cell.token_layer.end_block(cache)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            intermediate_dim=self.intermediate_dim,
            block_size=self.block_size,
            num_states=self.num_states,
            gate_type=self.gate_type,
            gate_variant=self.gate_variant,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            unroll=self.unroll,
            temperature_init=self.temperature_init,
            temperature_parameterization=self.temperature_parameterization,
            temperature_lr_multiplier=self.temperature_lr_multiplier,
            remat=self.remat,
            query_chunk_size=self.query_chunk_size,
        )
        return config
