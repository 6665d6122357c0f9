"""Training with carried state: a Keras model that streams long documents.

`BlockRecurrentStreamModel` wraps a `BlockRecurrentCausalLM` for `model.fit`
over long-document batches (`data.long_document_dataset`). It keeps each
batch slot's stream state (recurrent state and every layer's K/V cache) in
non-trainable variables of a fixed batch size, the mechanism Keras uses for
BatchNormalization's moving statistics, so the state is carried between steps
on every backend (JAX's stateless train step threads non-trainable variables
through and writes them back).

Per step: read the cached state, reset the slots where `start_of_sequence`
(or that were never written), run `lm.call_with_state`, write the new state
(already `stop_gradient`: truncated BPTT at segment boundaries, spec s9) and
return the logits. Training and evaluation keep separate caches (spec s9).

With the backbone's `loss_chunk_tokens` set, a training step returns the
final hidden states instead and `compute_loss` computes the compiled sparse
cross-entropy from them chunk by chunk (`lm.readout_loss`): the step never
holds the `[B, L, V]` logits. Evaluation and prediction still return logits.

The variables use `synchronization="on_read"`: under a `tf.distribute`
strategy every replica holds its own copy, of the per-replica batch size, so
per-replica state stays with the replica's slots.
"""

import keras
import numpy as np
from keras import ops


def shift_targets(token_ids):
    """Targets = inputs shifted left with 0 appended (spec s8)."""
    return ops.pad(token_ids[:, 1:], ((0, 0), (0, 1)))


def loss_weights(token_ids, targets):
    """1 where the input and the target are both non-padding, else 0."""
    return ops.cast(ops.logical_and(token_ids > 0, targets > 0), "float32")


class _Precomputed(keras.losses.Loss):
    """A loss whose value is already computed (`y_pred`); Keras reduces it."""

    def call(self, y_true, y_pred):
        return y_pred


@keras.saving.register_keras_serializable(package="brt_keras")
class BlockRecurrentStreamModel(keras.Model):
    """Carries the per-slot stream state of `lm` across `fit` steps.

    Inputs are dicts `{"token_ids": int32 [B, L], "start_of_sequence":
    bool [B]}`; the output is float32 logits `[B, L, V]`. `B` must equal
    `batch_size` (per replica under a `tf.distribute` strategy).

    Args:
        lm: a `BlockRecurrentCausalLM`.
        batch_size: int, slots per replica.

    Example:
    >>> lm = BlockRecurrentCausalLM.from_preset("rec_fixed_skip", size="tiny")
    >>> model = BlockRecurrentStreamModel(lm, batch_size=2)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> model.fit(dataset)  # yields (x dict, targets, loss weights)
    """

    def __init__(self, lm, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.lm = lm
        self.batch_size = int(batch_size)
        template = lm.get_initial_state(self.batch_size)
        self._state_structure = keras.tree.map_structure(lambda _: 0, template)
        flat = keras.tree.flatten(template)
        paths = self._state_paths(template)
        self.train_state = [
            self._state_variable(p, s, "train") for p, s in zip(paths, flat)
        ]
        self.eval_state = [
            self._state_variable(p, s, "eval") for p, s in zip(paths, flat)
        ]
        self.train_fresh = self._fresh_variable("train")
        self.eval_fresh = self._fresh_variable("eval")
        self.built = True

    @staticmethod
    def _state_paths(template):
        paths = []

        def visit(prefix, node):
            if isinstance(node, dict):
                for key in sorted(node):
                    visit(prefix + (str(key),), node[key])
            else:
                paths.append("_".join(prefix))

        visit((), template)
        return paths

    def _state_variable(self, path, value, which):
        return keras.Variable(
            np.zeros(tuple(value.shape), "float32"),
            dtype="float32",
            trainable=False,
            synchronization="on_read",
            aggregation="only_first_replica",
            name=f"{which}_state_{path}",
        )

    def _fresh_variable(self, which):
        # 1 = the slot holds no state yet (reset it whatever the batch says).
        return keras.Variable(
            np.ones((self.batch_size,), "float32"),
            dtype="float32",
            trainable=False,
            synchronization="on_read",
            aggregation="only_first_replica",
            name=f"{which}_fresh",
        )

    def stream_variables(self, training):
        """(state variables, fresh-flag variable) of the train or eval cache."""
        if training:
            return self.train_state, self.train_fresh
        return self.eval_state, self.eval_fresh

    def reset_state(self, training=None):
        """Marks every slot as fresh (both caches when `training` is None)."""
        for which in [True, False] if training is None else [training]:
            _, fresh = self.stream_variables(which)
            fresh.assign(ops.ones((self.batch_size,), "float32"))

    def call(self, inputs, training=None):
        token_ids = inputs["token_ids"]
        variables, fresh = self.stream_variables(bool(training))
        reset = fresh.value > 0
        start = inputs.get("start_of_sequence")
        if start is not None:
            reset = ops.logical_or(ops.cast(start, "bool"), reset)
        state = keras.tree.pack_sequence_as(
            self._state_structure, [v.value for v in variables]
        )
        if self._chunked_loss(training):
            # compute_loss reads the logits chunk by chunk from these.
            out, new_state = self.lm.backbone.call_with_state(
                token_ids, state, reset, training=training
            )
        else:
            out, new_state = self.lm.call_with_state(
                token_ids, state, reset, training=training
            )
        for variable, value in zip(variables, keras.tree.flatten(new_state)):
            variable.assign(ops.cast(value, "float32"))
        fresh.assign(ops.zeros((self.batch_size,), "float32"))
        return out

    def _chunked_loss(self, training):
        return bool(training) and bool(self.lm.backbone.loss_chunk_tokens)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """The compiled loss; in a training step with `loss_chunk_tokens`,
        computed from the hidden states `y_pred` without the logits. Only
        the loss the trainers compile is supported there:
        `SparseCategoricalCrossentropy(from_logits=True)` reduced by
        "sum_over_batch_size" or "sum", and no compiled metrics."""
        if not self._chunked_loss(training):
            return super().compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
        reduction = self._check_chunked_compile()
        weights = ops.ones(ops.shape(y)) if sample_weight is None else sample_weight
        total = self.lm.readout_loss(y_pred, y, weights)
        if reduction == "sum_over_batch_size":
            total = total / ops.cast(ops.size(y), "float32")
        # Keras' own reduction of a one-element value: for "sum_over_batch_size"
        # it divides by 1 and by the number of replicas of a tf.distribute
        # strategy, exactly what the compiled loss would do ("sum" divides by
        # neither). A 0-d value would skip that step.
        total = ops.reshape(total, (1,))
        loss = _Precomputed(reduction=reduction, name="chunked_nll")(
            ops.zeros_like(total), total
        )
        for extra in self.losses:
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def _check_chunked_compile(self):
        fix = (
            "compile with keras.losses.SparseCategoricalCrossentropy("
            "from_logits=True) and no metrics, or set the backbone's "
            "loss_chunk_tokens=None"
        )
        if getattr(self, "_compile_metrics", None) is not None:
            raise ValueError(
                "loss_chunk_tokens: a training step returns hidden states, not "
                f"logits, so compiled metrics cannot be computed; {fix}."
            )
        loss = self.loss
        config = loss.get_config() if isinstance(loss, keras.losses.Loss) else {}
        if not (
            isinstance(loss, keras.losses.SparseCategoricalCrossentropy)
            and config.get("from_logits")
            and config.get("ignore_class") is None
            and config.get("reduction") in ("sum_over_batch_size", "sum")
        ):
            raise ValueError(
                f"loss_chunk_tokens computes sparse cross-entropy from logits; "
                f"the compiled loss is {loss!r} ({config}); {fix}."
            )
        return config["reduction"]

    def get_config(self):
        config = super().get_config()
        config.update(
            lm=keras.saving.serialize_keras_object(self.lm),
            batch_size=self.batch_size,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["lm"] = keras.saving.deserialize_keras_object(config["lm"])
        return cls(**config)
