"""Causal language model on the Block-Recurrent Transformer backbone."""

import contextlib
import math
import os

import keras
import keras_hub
import numpy as np
from keras import ops

from brt_keras import samplers
from brt_keras.layers.readout import tied_readout
from brt_keras.layers.readout import tied_readout_loss
from brt_keras.models import presets
from brt_keras.models.block_recurrent_backbone import BlockRecurrentBackbone
from brt_keras.models.block_recurrent_backbone import check_token_ids
from brt_keras.models.block_recurrent_causal_lm_preprocessor import (
    BlockRecurrentCausalLMPreprocessor,
)

# `generate` compiles once per batch size and multiple of this many tokens.
LENGTH_BUCKET = 64
# The decode-cache entries a block's end changes in a recurrent layer.
RECURRENT_CACHE = ("recurrent_state", "state_keys", "state_values")

# Preset directories shipped with the package: `from_preset("<name>")`.
PRESETS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "presets")


def shipped_presets():
    """`{name: directory}` of the preset directories in `brt_keras/presets/`."""
    if not os.path.isdir(PRESETS_DIR):
        return {}
    return {
        name: os.path.join(PRESETS_DIR, name)
        for name in sorted(os.listdir(PRESETS_DIR))
        if os.path.isfile(os.path.join(PRESETS_DIR, name, "config.json"))
    }


def _is_token_ids(inputs):
    """Integer arrays, tensors or nested lists of ints (not text, not dicts)."""
    if isinstance(inputs, (dict, str, bytes)):
        return False
    if isinstance(inputs, (list, tuple)):
        flat = inputs
        while isinstance(flat, (list, tuple)) and flat:
            flat = flat[0]
        return isinstance(flat, (int, np.integer))
    dtype = getattr(inputs, "dtype", None)
    if dtype is None:
        return False
    try:
        return "int" in keras.backend.standardize_dtype(dtype)
    except ValueError:  # e.g. tf.string
        return False


def _stop_mask(token_ids, stop_token_ids, padding_mask):
    """True where a generated (unmasked) token is one of `stop_token_ids`."""
    found = ops.zeros_like(token_ids, dtype="bool")
    for stop in stop_token_ids:
        found = ops.logical_or(found, ops.equal(token_ids, stop))
    return ops.logical_and(found, ops.logical_not(padding_mask))


@keras.saving.register_keras_serializable(package="brt_keras")
class BlockRecurrentCausalLM(keras_hub.models.CausalLM):
    """Block-Recurrent Transformer language model (a keras-hub `CausalLM`).

    `logits = RMSNorm(stack(embed(ids))) @ E^T / sqrt(vocabulary_size)` with
    the input embedding E tied to the readout (the reference divides by
    sqrt(V), which pairs with E ~ N(0, 1)). The loss masks positions whose
    input or target id is 0 (padding).

    Text in, text out (keras-hub's contract): with a preprocessor attached
    (presets saved by `save_to_preset` carry one),
    `lm.generate("It is a truth", max_length=200)` returns a string, a list
    for a list; `lm.compile(sampler="top_p")` picks the sampler. Generation
    runs on the constant-cost decoder: `call_with_cache` feeds one token to
    `decode_step` and, at the end of each block, `end_block` folds the block
    into the recurrent state; the cache never grows.

    State is explicit (no `stateful=True`):
    `state = lm.get_initial_state(B)`, then
    `logits, state = lm.call_with_state(ids, state, start_of_sequence)` per
    segment. `lm(ids)` equals `call_with_state` from the initial state.

    Args:
        backbone: a `BlockRecurrentBackbone`.
        preprocessor: None or a `BlockRecurrentCausalLMPreprocessor` (needed
            for text in `generate`, `fit` and `save_to_preset` round trips).
        compile: bool, compile with keras-hub's defaults on construction
            (default: only with a preprocessor).
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

    backbone_cls = BlockRecurrentBackbone
    preprocessor_cls = BlockRecurrentCausalLMPreprocessor

    def __init__(self, backbone, preprocessor=None, segment_length=None, **kwargs):
        # keras-hub compiles every task on construction; a model without a
        # preprocessor (architecture presets, models saved before) is left
        # uncompiled as it always was, so loading its weights finds no
        # optimizer it does not expect. Either way `generate` has a sampler.
        compile_now = kwargs.pop("compile", preprocessor is not None)
        super().__init__(compile=False, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.dtype_policy = backbone.dtype_policy
        self.segment_length = segment_length or backbone.block_size
        self._generate_functions = {}
        self.built = True
        if compile_now:
            self.compile()
        else:
            self.sampler = samplers.get("top_k")  # keras-hub's default
            self.generate_function = None

    def compile(
        self, optimizer="auto", loss="auto", *, weighted_metrics=None, **kwargs
    ):
        """keras-hub's `CausalLM.compile` (sampler, "auto" optimizer and
        loss), except that no metric is added unless asked
        (`weighted_metrics="auto"` adds keras-hub's accuracy): as before,
        `train_on_batch` returns the loss alone."""
        super().compile(
            optimizer=optimizer,
            loss=loss,
            weighted_metrics=weighted_metrics,
            **kwargs,
        )

    # === Construction ===

    @classmethod
    def from_preset(cls, preset, size=None, load_weights=True, **kwargs):
        """A model from a preset.

        `preset` is one of:
        - a variant of the paper (see `presets.VARIANTS`, e.g.
          `"rec_fixed_skip"`) with `size` (see `presets.SIZES`, default
          `"medium_150m"`): an architecture with fresh weights and no
          tokenizer; `kwargs` are config overrides;
        - the name of a preset directory shipped in `brt_keras/presets/`
          (`shipped_presets()`), loaded without network;
        - a preset directory written by `save_to_preset` (or any keras-hub
          handle): weights, config and tokenizer. `kwargs` go to keras-hub's
          `CausalLM.from_preset` (e.g. `dtype`).
        """
        if preset in presets.VARIANTS:
            config = presets.preset_config(preset, size or "medium_150m", **kwargs)
            segment_length = config.pop("segment_length")
            return cls(BlockRecurrentBackbone(**config), segment_length=segment_length)
        preset = shipped_presets().get(preset, preset)
        if (
            isinstance(preset, str)
            and "://" not in preset
            and not os.path.exists(preset)
        ):
            raise ValueError(
                f"Unknown preset {preset!r}. Available: architecture presets "
                f"{', '.join(presets.VARIANTS)} (with size=...), shipped presets "
                f"{', '.join(shipped_presets()) or '(none)'}, or a preset "
                "directory written by `save_to_preset`."
            )
        if size is not None:
            raise ValueError(
                f"size={size!r} applies to the architecture presets "
                f"({', '.join(presets.VARIANTS)}); {preset!r} is a preset "
                "directory and has its own size."
            )
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

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
        # tied_readout also undoes an int8-quantized table's per-row scale.
        logits = tied_readout(self.backbone.token_embedding, hidden)
        return logits / math.sqrt(self.backbone.vocabulary_size)

    def readout_loss(self, hidden, targets, weights):
        """`sum(weights * NLL(targets))` (float32 scalar) from the backbone's
        `hidden` `[B, L, d]`: through the full logits by default, or
        `backbone.loss_chunk_tokens` positions at a time without ever holding
        the `[B, L, V]` logits (`readout.tied_readout_loss`; same value and
        gradients up to float rounding)."""
        chunk = self.backbone.loss_chunk_tokens
        if not chunk:
            ce = ops.sparse_categorical_crossentropy(
                targets, self._logits(hidden), from_logits=True
            )
            return ops.sum(ce * ops.cast(weights, "float32"))
        return tied_readout_loss(
            self.backbone.token_embedding,
            hidden,
            targets,
            weights,
            math.sqrt(self.backbone.vocabulary_size),
            chunk,
        )

    def get_initial_state(self, batch_size):
        return self.backbone.get_initial_state(batch_size)

    def call_with_state(self, token_ids, state, start_of_sequence=None, training=None):
        """Logits `[B, L, V]` (float32) and the next state for a segment of
        `[B, L]` ids, L a multiple of `block_size`."""
        hidden, state = self.backbone.call_with_state(
            token_ids, state, start_of_sequence, training=training
        )
        return self._logits(hidden), state

    def call(self, inputs, training=None):
        """Logits for `[B, L]` ids (or the preprocessor's dict of them)."""
        token_ids = inputs["token_ids"] if isinstance(inputs, dict) else inputs
        return self._logits(self.backbone(token_ids, training=training))

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        # Pad id 0 on the input or the target side is never a target (the
        # preprocessor's dict input brings its own padding weights).
        if y is not None and x is not None and not isinstance(x, dict):
            mask = ops.cast(ops.logical_and(x > 0, y > 0), "float32")
            sample_weight = mask if sample_weight is None else sample_weight * mask
        return super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    # === Incremental decoding ===

    def decode_cache(self, state):
        """Per-layer decoding cache from a stream state at a block boundary
        (`SlidingWindowLayer.decode_cache`): a key/value ring of the last
        W + 1 tokens per sliding-window layer; for a recurrent layer a ring
        of the previous and the current block (its state update reads both),
        the recurrent state and its keys/values (head-major, flat
        `[B, H * S * Dh]`, read in place by every step)."""
        cache = {}
        for i, layer in enumerate(self.backbone.transformer_layers):
            s = state[f"layer_{i}"]
            recurrent = hasattr(layer, "cell")
            token_layer = layer.cell.token_layer if recurrent else layer
            c = token_layer.decode_cache(
                s["keys"], s["values"], keep_previous_block=recurrent
            )
            if "recurrent_state" in s:
                c["recurrent_state"] = s["recurrent_state"]
                keys, values = layer.decode_state_kv(s["recurrent_state"])
                c["state_keys"], c["state_values"] = keys, values
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

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Keras' `Model.quantize` (e.g. `lm.quantize("int8")`) on the
        network; the preprocessor's tokenizer (a layer without weights, never
        built) is left out, where Keras would refuse it as unbuilt.
        `filters` works as in Keras."""
        from keras.src.quantizers.utils import should_quantize_layer

        skipped = set()
        if self.preprocessor is not None:
            skipped = {id(layer) for layer in self.preprocessor._flatten_layers()}

        def keep(layer):
            return id(layer) not in skipped and should_quantize_layer(layer, filters)

        return super().quantize(mode, config=config, filters=keep, **kwargs)

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

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """keras-hub's cached forward for one token per slot.

        `token_ids [B, 1]` sit at position `cache_update_index` (a scalar,
        the same for every slot). Returns `(logits [B, 1, V], None, cache)`
        (no hidden states: contrastive search is not supported). The cache
        has a fixed size: the block buffers and the recurrent state.
        """
        w = self.backbone.block_size
        position = ops.mod(ops.cast(cache_update_index, "int32"), w)
        logits, cache = self.decode_step(token_ids[:, 0], cache, position)
        return (
            logits[:, None, :],
            None,
            self._end_block_if(cache, ops.equal(position, w - 1)),
        )

    def _end_block_if(self, cache, is_end):
        """`end_block(cache)` where `is_end` (a scalar bool tensor), else
        `cache`, without a conditional over the whole cache (a branch that
        returns the cache unchanged still copies it, every token): the rings
        only flip `half`, and only the recurrent state update is a branch."""
        backbone, new = self.backbone, {}
        for i, layer in enumerate(backbone.transformer_layers):
            c = cache[f"layer_{i}"]
            if i in backbone.recurrent_indices:
                updated = ops.cond(
                    is_end,
                    lambda c=c, layer=layer: layer.update_recurrent(c),
                    lambda c=c: {k: c[k] for k in RECURRENT_CACHE},
                )
                c = dict(c, **updated)
                layer = layer.cell.token_layer
            new[f"layer_{i}"] = layer.end_block(c, when=is_end)
        return new

    def prefill(self, token_ids, num_blocks):
        """The stream state after the first `num_blocks` blocks of
        `token_ids [B, T]`, one block per loop step (`num_blocks` may be a
        traced scalar)."""
        w = self.backbone.block_size
        batch = ops.shape(token_ids)[0]
        state = self.get_initial_state(batch)

        def body(t, state):
            block = ops.slice(token_ids, [0, t * w], [batch, w])
            _, new_state = self.backbone.call_with_state(block, state)
            # Same structure in and out of the loop.
            new_state = {
                name: {key: new_state[name][key] for key in layer}
                for name, layer in state.items()
            }
            return t + 1, new_state

        _, state = ops.while_loop(
            lambda t, state: t < num_blocks,
            body,
            (ops.convert_to_tensor(0, "int32"), state),
        )
        return state

    def generate_step(self, inputs, stop_token_ids=None):
        """One batch of generation, compilable (keras-hub's contract).

        `inputs`: `{"token_ids": [B, T], "padding_mask": [B, T]}`, prompts
        right padded (the preprocessor's layout). Every slot sits at the same
        position: the complete blocks all prompts share run block by block
        through the segment path, then one token per step through
        `call_with_cache`; a slot whose prompt is longer is fed its own prompt
        tokens (the sampler keeps masked positions) until it starts sampling.
        So each slot's state holds exactly its own tokens, whatever the
        lengths in the batch.
        """
        token_ids = ops.cast(inputs["token_ids"], "int32")
        padding_mask = ops.cast(inputs["padding_mask"], "bool")
        w = self.backbone.block_size
        if "cache" in inputs:  # prefilled by `make_generate_function`
            cache, start = inputs["cache"], inputs["start"]
        else:
            shortest = ops.min(ops.sum(ops.cast(padding_mask, "int32"), axis=-1))
            # Keep the last shared prompt token for the first decode step.
            num_blocks = ops.maximum(shortest - 1, 0) // w
            cache = self.decode_cache(self.prefill(token_ids, num_blocks))
            start = num_blocks * w + 1

        sampler = self.sampler
        length = ops.shape(token_ids)[1]
        limit = inputs.get("max_length", length)

        def cond(prompt, cache, index, mask):
            go = index < limit
            if stop_token_ids is not None:
                # Until every slot has produced a (new) stop token.
                done = ops.any(_stop_mask(prompt, stop_token_ids, mask), axis=-1)
                go = ops.logical_and(go, ops.logical_not(ops.all(done)))
            return go

        def body(prompt, cache, index, mask):
            batch = ops.shape(prompt)[0]
            token = ops.slice(prompt, [0, index - 1], [batch, 1])
            logits, _, cache = self.call_with_cache(token, cache, index - 1)
            probabilities = sampler.compute_probabilities(logits[:, 0])
            next_token = ops.cast(sampler.get_next_token(probabilities), prompt.dtype)
            # Prompt positions keep their token (longer prompts in the batch).
            next_token = ops.where(mask[:, index], prompt[:, index], next_token)
            prompt = ops.slice_update(prompt, [0, index], next_token[:, None])
            return prompt, cache, index + 1, mask

        token_ids, _, _, _ = sampler.run_loop(
            cond,
            body,
            model=self,
            loop_vars=(token_ids, cache, start, padding_mask),
            maximum_iterations=length - start,
        )
        if stop_token_ids is None:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        else:
            # Keep up to and including each slot's first stop token.
            found = ops.cast(
                _stop_mask(token_ids, stop_token_ids, padding_mask), "int32"
            )
            after = ops.cumsum(found, axis=-1) - found
            padding_mask = ops.equal(after, 0)
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def make_generate_function(self):
        """keras-hub's compiled `generate_step`, with XLA on TensorFlow even
        where Keras' "auto" would not use it (CPU): decoding is 1.5x faster
        with it. Around it: lengths are padded to a multiple of
        `LENGTH_BUCKET` (one compilation serves them all), the shared prompt
        blocks are prefilled by a compiled one-block forward (so the decode
        loop compiles alone, and once), empty prompts are refused."""
        if self.generate_function is None:
            saved = getattr(self, "_jit_compile", None)
            if keras.config.backend() == "tensorflow":
                self._jit_compile = True
            try:
                compiled = super().make_generate_function()
            finally:
                if keras.config.backend() == "tensorflow":
                    self._jit_compile = saved

            def checked(inputs, stop_token_ids=None):
                token_ids = np.asarray(inputs["token_ids"]).astype("int32")
                mask = np.asarray(inputs["padding_mask"]).astype(bool)
                lengths = mask.sum(axis=-1)
                if lengths.size and lengths.min() == 0:
                    raise ValueError(
                        f"prompt {int(np.argmin(lengths))} of the batch is empty; "
                        "give every prompt at least one token (or build the "
                        "preprocessor with add_start_token=True)."
                    )
                # One compiled function serves every length up to a bucket
                # boundary: pad, stop the loop at the real length, cut.
                length = token_ids.shape[1]
                pad = ((0, 0), (0, -length % LENGTH_BUCKET))
                padded = {
                    "token_ids": np.pad(token_ids, pad),
                    "padding_mask": np.pad(mask, pad),
                    "max_length": np.asarray(length, "int32"),
                }
                padded["cache"], padded["start"] = self._prefill_cache(
                    token_ids, lengths.min()
                )
                out = compiled(padded, stop_token_ids=stop_token_ids)
                return {key: value[:, :length] for key, value in out.items()}

            self.generate_function = checked
        return self.generate_function

    def _prefill_cache(self, token_ids, shortest):
        """Decode cache after the complete blocks all prompts share (bar the
        last prompt token), one compiled block `[B, W]` at a time, and the
        index generation starts from."""
        w = self.backbone.block_size
        num_blocks = (int(shortest) - 1) // w
        state = self.get_initial_state(token_ids.shape[0])
        block = self._compiled("prefill_block", self.call_with_state)
        for t in range(num_blocks):
            _, state = block(token_ids[:, t * w : (t + 1) * w], state)
        return self.decode_cache(state), np.asarray(num_blocks * w + 1, "int32")

    @contextlib.contextmanager
    def _sampler_scope(self, sampler, seed):
        """Generation with `sampler` (name or instance) instead of the
        compiled one; its compiled function is kept for the next call, and a
        seeded sampler restarts from its seed each call."""
        if sampler is None and seed is None:
            yield
            return
        if sampler is None:
            sampler = "greedy" if self.sampler is None else self.sampler
        if isinstance(sampler, str):
            key = (sampler, seed)
            if key not in self._generate_functions:
                chosen = samplers.get(sampler, seed=seed)
                initial = [np.asarray(v) for v in chosen.variables]
                self._generate_functions[key] = [chosen, initial, None]
            entry = self._generate_functions[key]
        else:
            key = ("instance", id(sampler))
            if key not in self._generate_functions:
                self._generate_functions[key] = [samplers.get(sampler), None, None]
            entry = self._generate_functions[key]
        chosen, initial, function = entry
        if initial is not None and seed is not None:
            for variable, value in zip(chosen.variables, initial):
                variable.assign(value)
        saved = self.sampler, self.generate_function
        self.sampler, self.generate_function = chosen, function
        try:
            yield
        finally:
            entry[2] = self.generate_function
            self.sampler, self.generate_function = saved

    def generate(
        self,
        inputs,
        max_length=None,
        stop_token_ids="auto",
        strip_prompt=False,
        *,
        max_new_tokens=None,
        sampler=None,
        seed=None,
    ):
        """Text in, text out; or token ids in, token ids out.

        Text (a string, a list of strings, a `tf.data.Dataset`), with a
        preprocessor attached: keras-hub's `CausalLM.generate`. `max_length`
        is the total length in tokens (prompt included; default the
        preprocessor's `sequence_length`), or give `max_new_tokens`.
        Generation stops at the tokenizer's end token
        (`stop_token_ids="auto"`), at `stop_token_ids`, or at the length
        (`None`). Prompts of different lengths share a batch.

        Token ids `[B, P]` (int): the original API,
        `generate(ids, max_new_tokens)` -> `[B, P + max_new_tokens]` int32
        ids (the second positional argument is the number of new tokens
        here), no stop tokens unless `stop_token_ids` is given (ids after a
        slot's stop token are 0).

        `sampler` ("greedy", "random", "top_k", "top_p" or a
        `keras_hub.samplers.Sampler`) and `seed` override the compiled
        sampler (`compile(sampler=...)`, keras-hub's default "top_k") for
        this call; for ids the default stays "greedy".
        """
        if _is_token_ids(inputs):
            new = max_new_tokens if max_new_tokens is not None else max_length
            if new is None:
                raise ValueError(
                    "generate(token_ids, max_new_tokens): give max_new_tokens."
                )
            stop = None if stop_token_ids == "auto" else stop_token_ids
            with self._sampler_scope(sampler or "greedy", seed):
                return self._generate_ids(inputs, int(new), stop)
        if max_new_tokens is not None:
            if self.preprocessor is None:
                raise ValueError(
                    "Text needs a preprocessor: build one with "
                    "`BlockRecurrentCausalLMPreprocessor(BlockRecurrentTokenizer())` "
                    "and set `lm.preprocessor`, or load a preset that has one."
                )
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            longest = max(len(self.preprocessor.tokenizer(t)) for t in texts)
            max_length = longest + int(max_new_tokens)
        if self.preprocessor is None and not isinstance(inputs, dict):
            raise ValueError(
                "Text needs a preprocessor: build one with "
                "`BlockRecurrentCausalLMPreprocessor(BlockRecurrentTokenizer())` "
                "and set `lm.preprocessor`, or load a preset that has one; "
                "or pass token ids: `generate(ids, max_new_tokens=...)`."
            )
        with self._sampler_scope(sampler, seed):
            return super().generate(
                inputs,
                max_length=max_length,
                stop_token_ids=stop_token_ids,
                strip_prompt=strip_prompt,
            )

    def _generate_ids(self, prompt_ids, max_new_tokens, stop_token_ids):
        prompt = np.asarray(ops.convert_to_numpy(prompt_ids)).astype("int32")
        if prompt.ndim != 2 or prompt.shape[1] == 0:
            raise ValueError(
                f"prompt_ids must be [batch, length>=1] ids; got shape {prompt.shape}."
            )
        check_token_ids(prompt, self.backbone.vocabulary_size)
        if max_new_tokens <= 0:
            return ops.convert_to_tensor(prompt, "int32")
        batch, length = prompt.shape
        inputs = {
            "token_ids": np.pad(prompt, ((0, 0), (0, max_new_tokens))),
            "padding_mask": np.arange(length + max_new_tokens)[None].repeat(batch, 0)
            < length,
        }
        stop = tuple(stop_token_ids) if stop_token_ids is not None else None
        out = self.make_generate_function()(inputs, stop_token_ids=stop)
        ids = ops.convert_to_numpy(out["token_ids"]).astype("int32")
        if stop is not None:
            ids = np.where(ops.convert_to_numpy(out["padding_mask"]), ids, 0)
        return ops.convert_to_tensor(ids, "int32")

    def generate_stream(
        self, prompt_ids, max_new_tokens, sampler="greedy", state=None, seed=None
    ):
        """Yields `[B]` int32 token ids one at a time (for printing text as
        it comes; `generate` returns all at once).

        The prompt's complete blocks run as one segment; the rest of the
        prompt and every new token go through `decode_step`, which attends to
        the cached keys/values of the last W tokens per layer and reads the
        recurrent state, updated by `end_block` whenever a block completes.
        `sampler`: see `generate`.
        """
        sampler = samplers.get(sampler, seed=seed)
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
                probabilities = sampler.compute_probabilities(logits)
                token = ops.cast(sampler.get_next_token(probabilities), "int32")
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

    def get_config(self):
        config = super().get_config()
        config.update(segment_length=self.segment_length)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Models saved before the keras-hub base class had no preprocessor.
        config.setdefault("preprocessor", None)
        return super().from_config(config)


def _register_shipped_presets():
    """Lists the shipped presets with keras-hub's registry, so that
    `keras_hub.models.CausalLM.from_preset("<name>")` and
    `BlockRecurrentCausalLM.presets` know them (the handle is the local
    directory: no network)."""
    from keras_hub.src.utils.preset_utils import register_presets

    register_presets(
        {
            name: {
                "metadata": {"description": f"shipped in {path}", "path": name},
                "kaggle_handle": path,
            }
            for name, path in shipped_presets().items()
        },
        BlockRecurrentBackbone,
    )


_register_shipped_presets()
