"""Shared fixtures: tiny models are built once per session and reused."""

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")


@functools.cache
def tiny_lm(variant, **overrides):
    """A tiny `BlockRecurrentCausalLM` (block 8, 4 blocks per segment)."""
    from brt_keras import BlockRecurrentCausalLM

    keras.utils.set_random_seed(0)
    return BlockRecurrentCausalLM.from_preset(variant, size="tiny", **overrides)


def golden(name):
    path = os.path.join(GOLDEN_DIR, f"{name}.npz")
    return dict(np.load(path))


def random_ids(batch, length, vocabulary_size=260, seed=0):
    return np.random.default_rng(seed).integers(1, vocabulary_size, (batch, length))


def loss_and_grads(lm, ids, seed_state):
    """Training-mode loss and its gradients w.r.t. every trainable variable,
    with the dropout seed generators reset to `seed_state` first."""
    for variable, value in zip(lm.non_trainable_variables, seed_state):
        variable.assign(value)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def loss_fn():
        logits = lm(inputs, training=True)
        return keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(
                targets, logits, from_logits=True
            )
        )

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, lm.trainable_variables)
        return float(loss), [np.asarray(g) for g in grads]
    import jax

    trainable = lm.trainable_variables

    def stateless(values):
        with keras.StatelessScope(state_mapping=list(zip(trainable, values))):
            return loss_fn()

    loss, grads = jax.value_and_grad(stateless)([v.value for v in trainable])
    return float(loss), [np.asarray(g) for g in grads]


def pytest_collection_modifyitems(config, items):
    """Slow (multi-process, training) files first: `make test` spreads whole
    files over two pytest-xdist workers, and starting the longest ones first
    keeps both workers busy to the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def ids():
    return random_ids(2, 64).astype("int32")
