"""The Block-Recurrent Transformer cell: one block of W tokens per step.

Seen from the tokens this is an ordinary sliding-window layer whose attention
has 2H heads: H over the tokens, H over the recurrent state. Seen from the
state it is the same layer turned 90 degrees: the S state vectors attend to
themselves and to the block's tokens, and gates replace the residuals.
"""

import keras
from keras import ops

from brt_keras.layers.attention_ops import add_temperature
from brt_keras.layers.attention_ops import attend
from brt_keras.layers.attention_ops import l2_normalize
from brt_keras.layers.attention_ops import merge_heads
from brt_keras.layers.attention_ops import temperature_value
from brt_keras.layers.recurrent_gate import RecurrentGate
from brt_keras.layers.rms_norm import RMSNorm
from brt_keras.layers.sliding_window_layer import SlidingWindowLayer
from brt_keras.layers.sliding_window_layer import dense_initializer
from brt_keras.layers.token_dense import TokenDense

GATE_VARIANTS = ("skip", "dual", "single")


@keras.saving.register_keras_serializable(package="brt_keras")
class BlockRecurrentCell(keras.layers.Layer):
    """Recurrent cell over blocks, usable in `keras.layers.RNN`.

    States (a list, as `keras.layers.RNN` expects): the recurrent state
    `[B, S, d]`, then the previous block's keys and values `[B, W, H, Dh]`.
    One step takes a block `[B, W, d]` and returns the layer output
    `[B, W, d]` and the next states. Per step (reference
    `single_window_attention`):

    1. state projections: `u = RMSNorm(s_t) + state_ids`; keys/values/queries
       /queries2 from `u` (keys and queries L2-normalised);
    2. state self-attention and state -> token cross-attention over the 2W
       keys of the previous and current block (no mask, no bias);
    3. `s_{t+1}` = gated combination of `s_t` and the projected [self; cross]
       heads (`gate_variant`: skip, dual or single);
    4. tokens: sliding-window self-attention and cross-attention to the state
       keys/values of the *incoming* `s_t`, concatenated over heads, one
       projection, residual, FFN.

    The state path has no dropout and always computes in float32 (under a
    mixed policy the token side uses `token_dtype`).

    Args:
        hidden_dim, num_heads, head_dim, intermediate_dim, block_size: sizes.
        num_states: int, S.
        gate_type: `"fixed"` or `"lstm"`.
        gate_variant: `"skip"`, `"dual"` or `"single"`.
        dropout, attention_dropout: token-side dropout rates.
        token_dtype: dtype policy of the token side (default: the cell's).
        temperature_init, temperature_parameterization,
            temperature_lr_multiplier: every attention temperature's
            initial value and parameterization (reference: 1.0, "linear",
            1.0); see `attention_ops.add_temperature`.
        remat, query_chunk_size: how the attention core is computed in
            training (same values); see `SlidingWindowAttention`.

    Example:
    >>> cell = BlockRecurrentCell(64, 4, 16, 128, block_size=8, num_states=8)
    >>> rnn = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    >>> y, s, k, v = rnn(keras.random.normal((2, 4, 8, 64)))  # 4 blocks
    >>> y.shape, s.shape
    ((2, 4, 8, 64), (2, 8, 64))
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
        token_dtype=None,
        temperature_init=1.0,
        temperature_parameterization="linear",
        temperature_lr_multiplier=1.0,
        remat=False,
        query_chunk_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if gate_variant not in GATE_VARIANTS:
            raise ValueError(
                f"Unknown gate_variant {gate_variant!r}; use one of {GATE_VARIANTS}."
            )
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
        self.token_dtype = token_dtype
        self.temperature_init = temperature_init
        self.temperature_parameterization = temperature_parameterization
        self.temperature_lr_multiplier = temperature_lr_multiplier
        self.remat = remat
        self.query_chunk_size = query_chunk_size
        width = num_heads * head_dim
        self.state_size = [
            (num_states, hidden_dim),
            (block_size, num_heads, head_dim),
            (block_size, num_heads, head_dim),
        ]
        self.output_size = (block_size, hidden_dim)

        # Token side: an ordinary layer with a second query set (tbase).
        self.token_layer = SlidingWindowLayer(
            hidden_dim,
            num_heads,
            head_dim,
            intermediate_dim,
            block_size,
            cross_attention=True,
            dropout=dropout,
            attention_dropout=attention_dropout,
            temperature_init=temperature_init,
            temperature_parameterization=temperature_parameterization,
            temperature_lr_multiplier=temperature_lr_multiplier,
            remat=remat,
            query_chunk_size=query_chunk_size,
            dtype=token_dtype or self.dtype_policy,
            name="tbase",
        )

        # State side (recurrent_tbase): float32, no dropout. A quantized
        # model's per-layer policies (a DTypePolicyMap whose default is
        # float32, see BlockRecurrentLayer) must reach these sublayers too.
        state_dtype = (
            self.dtype_policy
            if isinstance(self.dtype_policy, keras.dtype_policies.DTypePolicyMap)
            else "float32"
        )

        def dense(units, name, activation=None):
            return TokenDense(
                units,
                activation=activation,
                use_bias=False,
                kernel_initializer=dense_initializer(),
                dtype=state_dtype,
                name=name,
            )

        def norm(name):
            return RMSNorm(epsilon=1e-6, dtype=state_dtype, name=name)

        self.state_norm = norm("state_pre_attn_layernorm")
        self.state_query_dense = dense(width, "state_queries_layer")
        self.state_key_dense = dense(width, "state_keys_layer")
        self.state_value_dense = dense(width, "state_values_layer")
        self.state_query2_dense = dense(width, "state_queries2_layer")
        if gate_variant in ("skip", "dual"):
            self.state_output_dense = dense(hidden_dim, "state_output_layer")
        if gate_variant in ("dual", "single"):
            if gate_variant == "dual":
                self.state_ffn_norm = norm("state_pre_ffn_layernorm")
            self.state_ffn_hidden = dense(intermediate_dim, "state_ffn_hidden0", "relu")
            self.state_ffn_output = dense(hidden_dim, "state_ffn_output_layer")
        self.gate = RecurrentGate(gate_type, hidden_dim, dtype="float32", name="gate")
        if gate_variant == "dual":
            self.ffn_gate = RecurrentGate(
                gate_type, hidden_dim, dtype="float32", name="ffn_gate"
            )

    def build(self, input_shape):
        b = input_shape[0]
        s, d, f = self.num_states, self.hidden_dim, self.intermediate_dim
        width = self.num_heads * self.head_dim
        self.token_layer.build((b, self.block_size, d))
        self.state_ids = self.add_weight(
            name="state_ids",
            shape=(s, d),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            dtype="float32",
        )
        self.initial_state = self.add_weight(
            name="initial_state",
            shape=(s, d),
            initializer=keras.initializers.RandomNormal(stddev=0.1),
            dtype="float32",
        )
        options = (
            self.temperature_init,
            self.temperature_parameterization,
            self.temperature_lr_multiplier,
        )
        self.state_temperature = add_temperature(
            self, "state_attention_scale", self.num_heads, *options, dtype="float32"
        )
        self.state_temperature2 = add_temperature(
            self, "state_attention_scale2", self.num_heads, *options, dtype="float32"
        )
        self.state_norm.build((b, s, d))
        for layer in self._state_projections():
            layer.build((b, s, d))
        if self.gate_variant in ("skip", "dual"):
            self.state_output_dense.build((b, s, 2 * width))
            self.gate.build((b, s, d), (b, s, d), (b, s, 2 * width))
        if self.gate_variant == "dual":
            self.state_ffn_norm.build((b, s, d))
            self.state_ffn_hidden.build((b, s, d))
            self.state_ffn_output.build((b, s, f))
            self.ffn_gate.build((b, s, d), (b, s, d), (b, s, f))
        if self.gate_variant == "single":
            self.state_ffn_hidden.build((b, s, 2 * width))
            self.state_ffn_output.build((b, s, f))
            self.gate.build((b, s, d), (b, s, d), (b, s, f))
        self.built = True

    def _state_projections(self):
        return [
            self.state_query_dense,
            self.state_key_dense,
            self.state_value_dense,
            self.state_query2_dense,
        ]

    def _heads(self, x):
        shape = ops.shape(x)
        return ops.reshape(x, tuple(shape[:-1]) + (self.num_heads, self.head_dim))

    def project_state(self, state):
        """State queries, keys, values, queries2, each `[B, S, H, Dh]`."""
        u = self.state_norm(state) + self.state_ids
        rq = l2_normalize(self._heads(self.state_query_dense(u)))
        rk = l2_normalize(self._heads(self.state_key_dense(u)))
        rv = self._heads(self.state_value_dense(u))
        rq2 = l2_normalize(self._heads(self.state_query2_dense(u)))
        return rq, rk, rv, rq2

    def state_kv(self, state):
        """Keys and values of a state, what the tokens cross-attend to
        (the reference's `get_recurrent_kv`)."""
        _, rk, rv, _ = self.project_state(ops.cast(state, "float32"))
        return rk, rv

    def update_state(self, state, block_keys, block_values, projected=None):
        """`s_{t+1}` from `s_t` and the 2W token keys/values `[B, 2W, H, Dh]`
        of the previous and current block."""
        state = ops.cast(state, "float32")
        rq, rk, rv, rq2 = projected or self.project_state(state)
        self_out = attend(rq, rk, rv, self._temperature(self.state_temperature))
        cross_out = attend(
            rq2,
            ops.cast(block_keys, "float32"),
            ops.cast(block_values, "float32"),
            self._temperature(self.state_temperature2),
        )
        h = ops.concatenate([merge_heads(self_out), merge_heads(cross_out)], -1)
        if self.gate_variant == "single":
            hidden = self.state_ffn_hidden(h)
            return self.gate(state, ops.tanh(self.state_ffn_output(hidden)), hidden)
        state = self.gate(state, self.state_output_dense(h), h)
        if self.gate_variant == "dual":
            hidden = self.state_ffn_hidden(self.state_ffn_norm(state))
            state = self.ffn_gate(state, self.state_ffn_output(hidden), hidden)
        return state

    def _temperature(self, variable):
        return temperature_value(
            variable, self.temperature_parameterization, self.temperature_lr_multiplier
        )

    def get_initial_state(self, batch_size=None):
        if not self.built:
            self.build((batch_size, self.block_size, self.hidden_dim))
        kv = (batch_size, self.block_size, self.num_heads, self.head_dim)
        state = ops.broadcast_to(
            self.initial_state[None], (batch_size, self.num_states, self.hidden_dim)
        )
        return [ops.convert_to_tensor(state), ops.zeros(kv), ops.zeros(kv)]

    def call(self, inputs, states, training=None):
        state, prev_keys, prev_values = states
        projected = self.project_state(ops.cast(state, "float32"))
        tokens = self.token_layer
        inputs = ops.cast(inputs, tokens.compute_dtype)
        q, k, v, q2 = tokens.project(inputs, training=training)
        self_out = tokens.self_attention(
            q,
            k,
            v,
            ops.cast(prev_keys, k.dtype),
            ops.cast(prev_values, v.dtype),
            training=training,
        )
        # Tokens read the incoming state s_t, not s_{t+1}.
        cross_out = tokens.cross_attend(q2, (projected[1], projected[2]))
        outputs = tokens.finish(inputs, self_out, cross_out, training=training)
        block_keys = ops.concatenate([ops.cast(prev_keys, k.dtype), k], axis=1)
        block_values = ops.concatenate([ops.cast(prev_values, v.dtype), v], axis=1)
        new_state = self.update_state(state, block_keys, block_values, projected)
        return outputs, [
            new_state,
            ops.cast(k, "float32"),
            ops.cast(v, "float32"),
        ]

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
            token_dtype=self.token_dtype,
            temperature_init=self.temperature_init,
            temperature_parameterization=self.temperature_parameterization,
            temperature_lr_multiplier=self.temperature_lr_multiplier,
            remat=self.remat,
            query_chunk_size=self.query_chunk_size,
        )
        return config
