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
        logits, new_state = self.lm.call_with_state(
            token_ids, state, reset, training=training
        )
        for variable, value in zip(variables, keras.tree.flatten(new_state)):
            variable.assign(ops.cast(value, "float32"))
        fresh.assign(ops.zeros((self.batch_size,), "float32"))
        return logits

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
