"""Embedding, a stack of sliding-window / recurrent layers, final RMS norm."""

import keras
import keras_hub
import numpy as np
from keras import ops

from brt_keras.layers.block_recurrent_layer import BlockRecurrentLayer
from brt_keras.layers.readout import check_loss_chunk_tokens
from brt_keras.layers.rms_norm import RMSNorm
from brt_keras.layers.sliding_window_attention import check_remat
from brt_keras.layers.sliding_window_attention import resolve_query_chunk_size
from brt_keras.layers.sliding_window_layer import SlidingWindowLayer
from brt_keras.layers.sliding_window_layer import reset_where
from brt_keras.layers.tiled_dropout import TiledDropout


def check_token_ids(token_ids, vocabulary_size):
    """Raises a clear ValueError for ids outside [0, V) when they are
    concrete (eager); traced ids cannot be inspected and are left alone."""
    try:
        ids = np.asarray(ops.convert_to_numpy(token_ids))
    except Exception:  # symbolic / traced: nothing to inspect
        return
    if ids.size and (ids.min() < 0 or ids.max() >= vocabulary_size):
        raise ValueError(
            f"token ids must lie in [0, vocabulary_size={vocabulary_size}); "
            f"got min {ids.min()} and max {ids.max()}. Check the tokenizer "
            "matches the model, or build the model with a larger "
            "`vocabulary_size`."
        )


@keras.saving.register_keras_serializable(package="brt_keras")
class BlockRecurrentBackbone(keras_hub.models.Backbone):
    """The Block-Recurrent Transformer layer stack (a keras-hub `Backbone`).

    token embedding (N(0, 1), unscaled, no absolute positions) -> layers ->
    final RMSNorm -> dropout. Every layer is a `SlidingWindowLayer` except
    those in `recurrent_layers`, which are `BlockRecurrentLayer`s. With
    `feedback=True` the whole stack runs block by block and every other
    layer cross-attends to the state the recurrent layer held at the start of
    the block.

    The state is explicit: `get_initial_state(batch_size)` returns a dict
    `{"layer_0": ..., ...}` and `call_with_state` returns the next one
    (gradients stopped, so truncated BPTT happens at segment boundaries).

    Args:
        vocabulary_size: int, embedding rows (id 0 = padding).
        num_layers, hidden_dim, num_heads, head_dim, intermediate_dim: sizes.
        block_size: int, W: window of the local attention and one recurrent
            step.
        num_states: int, S (ignored without recurrent layers).
        recurrent_layers: tuple of layer indices, negatives taken modulo
            `num_layers` (the paper: `(-3,)`, layer 9 of 12).
        gate_type: `"fixed"` or `"lstm"`.
        gate_variant: `"skip"`, `"dual"` or `"single"`.
        feedback: bool, the feedback variant.
        dropout: float, used for all dropout (0.05 in the paper).
        unroll: bool, unroll the recurrent layer's block loop.
        temperature_init, temperature_parameterization,
            temperature_lr_multiplier: every attention temperature's initial
            value and parameterization (reference: 1.0, "linear", 1.0; a
            recall-training lever, see `attention_ops.add_temperature`).
        remat: False (default, the reference), True or `"attention"`:
            rematerialise every layer's attention core in training
            (`SlidingWindowAttention`): less memory, one more forward pass of
            the core. `"layer"`: recompute every sliding-window layer whole
            from its input in the backward pass (the recurrent layer's cores
            as with True): least memory, about one more forward pass.
        loss_chunk_tokens: None (default, the reference: the training loss
            reads the full `[B, L, V]` logits) or an int: the LM's training
            loss (`BlockRecurrentCausalLM.readout_loss`, used by
            `BlockRecurrentStreamModel` and the trainers) runs over this
            many positions at a time and never materialises the logits
            (`readout.tied_readout_loss`): same loss and gradients, about
            `[N, V]` float32 buffers less memory. A training setting kept
            here with `remat`; inference always returns logits.
        query_chunk_size: None (default: W / 4 for W >= 256, else W) or
            an int dividing W: the sliding-window attention scores chunks of
            this many queries against the W + C keys their windows span
            instead of whole `[W, 2W]` blocks (`SlidingWindowAttention`):
            the same values to float round-off, less work and memory (the
            attention core's forward + backward runs 1.7x faster at W = 512 on
            CPU). W reproduces the reference's tile layout.

    Example:
    >>> backbone = BlockRecurrentBackbone(260, 2, 64, 4, 16, 128, 8,
    ...     num_states=8, recurrent_layers=(-1,))
    >>> state = backbone.get_initial_state(2)
    >>> h, state = backbone.call_with_state(np.ones((2, 32), "int32"), state)
    >>> h.shape
    (2, 32, 64)
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        hidden_dim,
        num_heads,
        head_dim,
        intermediate_dim,
        block_size,
        num_states=0,
        recurrent_layers=(),
        gate_type="fixed",
        gate_variant="skip",
        feedback=False,
        dropout=0.0,
        unroll=True,
        temperature_init=1.0,
        temperature_parameterization="linear",
        temperature_lr_multiplier=1.0,
        remat=False,
        loss_chunk_tokens=None,
        query_chunk_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.block_size = block_size
        self.num_states = num_states
        self.recurrent_layers = tuple(recurrent_layers)
        self.gate_type = gate_type
        self.gate_variant = gate_variant
        self.feedback = feedback
        self.dropout = dropout
        self.unroll = unroll
        self.temperature_init = temperature_init
        self.temperature_parameterization = temperature_parameterization
        self.temperature_lr_multiplier = temperature_lr_multiplier
        self.remat = check_remat(remat)
        self.loss_chunk_tokens = check_loss_chunk_tokens(loss_chunk_tokens)
        resolve_query_chunk_size(query_chunk_size, block_size)
        self.query_chunk_size = query_chunk_size
        self.recurrent_indices = sorted({i % num_layers for i in recurrent_layers})
        if self.recurrent_indices and num_states <= 0:
            raise ValueError(
                "recurrent_layers need num_states > 0 (the paper uses 512)."
            )
        if feedback and len(self.recurrent_indices) != 1:
            raise ValueError(
                "feedback=True needs exactly one recurrent layer; got "
                f"recurrent_layers={self.recurrent_layers}."
            )

        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
            dtype=self.dtype_policy,
            name="embed",
        )
        sizes = dict(
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            head_dim=head_dim,
            intermediate_dim=intermediate_dim,
            block_size=block_size,
            dropout=dropout,
            attention_dropout=dropout,
            temperature_init=temperature_init,
            temperature_parameterization=temperature_parameterization,
            temperature_lr_multiplier=temperature_lr_multiplier,
            remat=remat,
            query_chunk_size=query_chunk_size,
            dtype=self.dtype_policy,
        )
        self.transformer_layers = []
        for i in range(num_layers):
            if i in self.recurrent_indices:
                layer = BlockRecurrentLayer(
                    num_states=num_states,
                    gate_type=gate_type,
                    gate_variant=gate_variant,
                    unroll=unroll,
                    name=f"transformer{i}",
                    **sizes,
                )
            else:
                layer = SlidingWindowLayer(
                    cross_attention=feedback, name=f"transformer{i}", **sizes
                )
            self.transformer_layers.append(layer)
        self.final_norm = RMSNorm(
            epsilon=1e-6, dtype=self.dtype_policy, name="final_layernorm"
        )
        self.final_dropout = TiledDropout(dropout, dtype=self.dtype_policy)
        self.build((None, block_size))

    def build(self, input_shape):
        shape = (None, None, self.hidden_dim)
        self.token_embedding.build(input_shape)
        for layer in self.transformer_layers:
            layer.build(shape)
        self.final_norm.build(shape)
        self.built = True

    def get_initial_state(self, batch_size):
        """The stream state of a fresh document in every slot."""
        return {
            f"layer_{i}": layer.get_initial_state(batch_size)
            for i, layer in enumerate(self.transformer_layers)
        }

    def check_state(self, state, batch_size):
        """Raises ValueError naming the fix if `state` has the wrong
        structure or batch size."""
        expected = self.get_initial_state(1)
        fix = "Use `get_initial_state(batch_size)` or a state returned by "
        fix += "`call_with_state` of this model."
        if not isinstance(state, dict) or set(state) != set(expected):
            got = sorted(state) if isinstance(state, dict) else type(state)
            raise ValueError(
                f"state must be a dict with keys {sorted(expected)}; got {got}. " + fix
            )
        for name, layer_state in state.items():
            if not isinstance(layer_state, dict) or set(layer_state) - {
                "all_recurrent_states"
            } != set(expected[name]):
                raise ValueError(
                    f"state[{name!r}] must have keys {sorted(expected[name])}. " + fix
                )
            for key, value in expected[name].items():
                shape = tuple(layer_state[key].shape)
                want = tuple(value.shape[1:])
                if shape[1:] != want or (
                    shape[0] is not None
                    and batch_size is not None
                    and shape[0] != batch_size
                ):
                    raise ValueError(
                        f"state[{name!r}][{key!r}] has shape {shape}; expected "
                        f"({batch_size}, {', '.join(map(str, want))}) for a "
                        f"batch of {batch_size}. " + fix
                    )

    def recurrent_layer(self):
        return self.transformer_layers[self.recurrent_indices[0]]

    def call_with_state(self, token_ids, state, start_of_sequence=None, training=None):
        """Runs one segment `[B, N*W]` of token ids from a carried state.

        Returns `(hidden [B, N*W, d], new_state)`; `start_of_sequence[b]`
        resets slot b (learned initial state, zero key/value caches).
        """
        check_token_ids(token_ids, self.vocabulary_size)
        length = token_ids.shape[1]
        if length is not None and length % self.block_size:
            raise ValueError(
                f"token_ids length {length} is not a multiple of block_size="
                f"{self.block_size}. Pad with 0 to a multiple of "
                f"{self.block_size} (padding is masked in the loss), or call "
                "the model directly (`lm(token_ids)` pads internally)."
            )
        self.check_state(state, token_ids.shape[0])
        x = self.token_embedding(token_ids)
        new_state = {}
        if not self.feedback:
            for i, layer in enumerate(self.transformer_layers):
                x, new_state[f"layer_{i}"] = layer.call_with_state(
                    x, state[f"layer_{i}"], start_of_sequence, training=training
                )
        else:
            x, new_state = self._feedback_stack(x, state, start_of_sequence, training)
        h = self.final_dropout(self.final_norm(x), training=training)
        new_state = keras.tree.map_structure(ops.stop_gradient, new_state)
        return h, new_state

    def _feedback_stack(self, x, state, start_of_sequence, training):
        """The whole stack block by block; non-recurrent layers read the
        state the recurrent layer held before the current block."""
        w = self.block_size
        rec = self.recurrent_layer()
        state = dict(state)
        for i, layer in enumerate(self.transformer_layers):
            if isinstance(layer, BlockRecurrentLayer):
                state[f"layer_{i}"] = layer.reset(
                    state[f"layer_{i}"], start_of_sequence
                )
            else:
                state[f"layer_{i}"] = {
                    k: reset_where(start_of_sequence, 0.0, v)
                    for k, v in state[f"layer_{i}"].items()
                }
        outputs = []
        for t in range(x.shape[1] // w):
            h = x[:, t * w : (t + 1) * w]
            state_kv = rec.state_kv(state[f"layer_{self.recurrent_indices[0]}"])
            for i, layer in enumerate(self.transformer_layers):
                kwargs = {} if layer is rec else {"state_kv": state_kv}
                h, state[f"layer_{i}"] = layer.call_with_state(
                    h, state[f"layer_{i}"], training=training, **kwargs
                )
            outputs.append(h)
        return ops.concatenate(outputs, axis=1), state

    def call(self, token_ids, training=None):
        """Hidden states from a fresh state; any length (padded internally
        to a multiple of `block_size`, which causality makes exact)."""
        length = token_ids.shape[1]
        pad = -length % self.block_size
        if pad:
            token_ids = ops.pad(token_ids, ((0, 0), (0, pad)))
        state = self.get_initial_state(ops.shape(token_ids)[0])
        h, _ = self.call_with_state(token_ids, state, training=training)
        return h[:, :length] if pad else h

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            num_layers=self.num_layers,
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            intermediate_dim=self.intermediate_dim,
            block_size=self.block_size,
            num_states=self.num_states,
            recurrent_layers=list(self.recurrent_layers),
            gate_type=self.gate_type,
            gate_variant=self.gate_variant,
            feedback=self.feedback,
            dropout=self.dropout,
            unroll=self.unroll,
            temperature_init=self.temperature_init,
            temperature_parameterization=self.temperature_parameterization,
            temperature_lr_multiplier=self.temperature_lr_multiplier,
            remat=self.remat,
            loss_chunk_tokens=self.loss_chunk_tokens,
            query_chunk_size=self.query_chunk_size,
        )
        return config
