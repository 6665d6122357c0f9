"""Causal language model on the Block-Recurrent Transformer backbone."""

import math

import keras
from keras import ops

from brt_keras.models import presets
from brt_keras.models.block_recurrent_backbone import BlockRecurrentBackbone
from brt_keras.models.block_recurrent_backbone import check_token_ids
from brt_keras.samplers import get as get_sampler


@keras.saving.register_keras_serializable(package="brt_keras")
class BlockRecurrentCausalLM(keras.Model):
    """Block-Recurrent Transformer language model.

    `logits = RMSNorm(stack(embed(ids))) @ E^T / sqrt(vocabulary_size)` with
    the input embedding E tied to the readout (the reference divides by
    sqrt(V), which pairs with E ~ N(0, 1)). The loss masks positions whose
    input or target id is 0 (padding).

    State is explicit (no `stateful=True`):
    `state = lm.get_initial_state(B)`, then
    `logits, state = lm.call_with_state(ids, state, start_of_sequence)` per
    segment. `lm(ids)` equals `call_with_state` from the initial state.

    Args:
        backbone: a `BlockRecurrentBackbone`.
        segment_length: int, the training segment L (metadata for trainers).

    Example:
    >>> lm = BlockRecurrentCausalLM.from_preset("rec_fixed_skip", size="tiny")
    >>> state = lm.get_initial_state(2)
    >>> ids = np.random.randint(1, 260, (2, 64))
    >>> for segment in np.split(ids, 2, axis=1):
    ...     logits, state = lm.call_with_state(segment, state)
    >>> lm.generate(ids[:, :10], max_new_tokens=5).shape
    (2, 15)
    """

    def __init__(self, backbone, segment_length=None, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.segment_length = segment_length or backbone.block_size
        self.built = True

    # === Construction ===

    @classmethod
    def from_preset(cls, variant, size="medium_150m", **overrides):
        """A model of the paper's `variant` (see `presets.VARIANTS`) at `size`
        (see `presets.SIZES`); `overrides` are config keys."""
        config = presets.preset_config(variant, size, **overrides)
        segment_length = config.pop("segment_length")
        return cls(BlockRecurrentBackbone(**config), segment_length=segment_length)

    @classmethod
    def from_meliad(cls, params, segment_length=None, **config):
        """A model holding meliad `DecoderStack` parameters: a flat dict
        `{"params/embed/embedding": ..., ...}` or a meliad checkpoint
        directory (read with orbax or flax, if installed). `config` gives
        the backbone config keys."""
        from brt_keras.convert.meliad import load_meliad_model

        return load_meliad_model(cls, params, segment_length, **config)

    # === Forward ===

    def _logits(self, hidden):
        embeddings = self.backbone.token_embedding.embeddings
        logits = ops.matmul(hidden, ops.transpose(ops.cast(embeddings, hidden.dtype)))
        logits = ops.cast(logits, "float32")
        return logits / math.sqrt(self.backbone.vocabulary_size)

    def get_initial_state(self, batch_size):
        return self.backbone.get_initial_state(batch_size)

    def call_with_state(self, token_ids, state, start_of_sequence=None, training=None):
        """Logits `[B, L, V]` (float32) and the next state for a segment of
        `[B, L]` ids, L a multiple of `block_size`."""
        hidden, state = self.backbone.call_with_state(
            token_ids, state, start_of_sequence, training=training
        )
        return self._logits(hidden), state

    def call(self, token_ids, training=None):
        return self._logits(self.backbone(token_ids, training=training))

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        # Pad id 0 on the input or the target side is never a target.
        if y is not None and x is not None and not isinstance(x, dict):
            mask = ops.cast(ops.logical_and(x > 0, y > 0), "float32")
            sample_weight = mask if sample_weight is None else sample_weight * mask
        return super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    # === Incremental decoding ===

    def decode_cache(self, state):
        """Per-layer decoding cache from a stream state at a block boundary:
        previous block K/V, an empty current-block buffer, the recurrent
        state and its keys/values."""
        cache = {}
        for i, layer in enumerate(self.backbone.transformer_layers):
            s = state[f"layer_{i}"]
            c = {
                "previous_keys": s["keys"],
                "previous_values": s["values"],
                "keys": ops.zeros_like(s["keys"]),
                "values": ops.zeros_like(s["values"]),
            }
            if "recurrent_state" in s:
                c["recurrent_state"] = s["recurrent_state"]
                c["state_keys"], c["state_values"] = layer.state_kv(s)
            cache[f"layer_{i}"] = c
        return cache

    def decode_step(self, token_ids, cache, index):
        """Logits `[B, V]` for one new token `[B]` at position `index` of the
        current block; cost independent of the context length."""
        backbone = self.backbone
        x = backbone.token_embedding(ops.reshape(token_ids, (-1, 1)))
        state_kv = None
        if backbone.feedback:
            c = cache[f"layer_{backbone.recurrent_indices[0]}"]
            state_kv = (c["state_keys"], c["state_values"])
        new_cache = {}
        for i, layer in enumerate(backbone.transformer_layers):
            name = f"layer_{i}"
            if i in backbone.recurrent_indices:
                x, new_cache[name] = layer.decode_step(x, cache[name], index)
            else:
                x, new_cache[name] = layer.decode_step(
                    x, cache[name], index, state_kv=state_kv
                )
        logits = self._logits(backbone.final_norm(x))
        return logits[:, 0], new_cache

    def end_block(self, cache):
        """Called after the W-th token of a block: recurrent layers update
        their state from the whole block, buffers roll."""
        return {
            f"layer_{i}": layer.end_block(cache[f"layer_{i}"])
            for i, layer in enumerate(self.backbone.transformer_layers)
        }

    def _compiled(self, name, fn):
        """`fn` compiled for the active backend (tf.function+XLA / jax.jit)."""
        cached = getattr(self, "_compiled_fns", None)
        if cached is None:
            cached = self._compiled_fns = {}
        if name in cached:
            return cached[name]
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            compiled = tf.function(fn, jit_compile=True)
        elif backend == "jax":
            import jax

            variables = self.variables

            def stateless(values, *args):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return fn(*args)

            jitted = jax.jit(stateless)

            def compiled(*args):
                return jitted([v.value for v in variables], *args)
        else:
            compiled = fn
        cached[name] = compiled
        return compiled

    def generate_stream(
        self, prompt_ids, max_new_tokens, sampler="greedy", state=None, seed=None
    ):
        """Yields `[B]` int32 token ids one at a time.

        The prompt's complete blocks run as one segment; the rest of the
        prompt and every new token go through `decode_step`, which attends to
        the cached keys/values of the last W tokens per layer and reads the
        recurrent state, updated by `end_block` whenever a block completes.
        """
        sampler = get_sampler(sampler, seed=seed)
        prompt_ids = ops.convert_to_tensor(prompt_ids, "int32")
        check_token_ids(prompt_ids, self.backbone.vocabulary_size)
        batch, length = prompt_ids.shape
        if length == 0:
            raise ValueError("prompt_ids must hold at least one token.")
        w = self.backbone.block_size
        full = (length // w) * w
        state = self.get_initial_state(batch) if state is None else state
        logits = None
        if full:
            segment = self._compiled("segment", self.call_with_state)
            logits, state = segment(prompt_ids[:, :full], state)
            logits = logits[:, -1]
        cache = self.decode_cache(state)
        step = self._compiled("step", self.decode_step)
        end_block = self._compiled("end_block", self.end_block)
        position = full
        pending = [prompt_ids[:, i] for i in range(full, length)]
        produced = 0
        while produced < max_new_tokens:
            if pending:
                token = pending.pop(0)
            else:
                token = sampler(logits)
                produced += 1
                yield token
                if produced == max_new_tokens:
                    return
            logits, cache = step(
                token, cache, ops.convert_to_tensor(position % w, "int32")
            )
            position += 1
            if position % w == 0:
                cache = end_block(cache)

    def generate(self, prompt_ids, max_new_tokens, sampler="greedy", seed=None):
        """Prompt `[B, P]` -> `[B, P + max_new_tokens]` int32 ids.

        `sampler`: "greedy", "top_k", "top_p" or a sampler object
        (`brt_keras.samplers`).
        """
        prompt_ids = ops.convert_to_tensor(prompt_ids, "int32")
        new = list(self.generate_stream(prompt_ids, max_new_tokens, sampler, seed=seed))
        if not new:
            return prompt_ids
        return ops.concatenate([prompt_ids, ops.stack(new, axis=1)], axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            segment_length=self.segment_length,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
