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


@pytest.fixture
def ids():
    return random_ids(2, 64).astype("int32")
