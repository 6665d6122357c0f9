"""Sliding-window attention in query chunks (`query_chunk_size`) computes
the reference's `[W, 2W]` tiles' function: same outputs, gradients and
dropout masks; only the tile layout differs."""

import keras
import numpy as np
import pytest
from conftest import loss_and_grads
from conftest import random_ids

from brt_keras import BlockRecurrentCausalLM
from brt_keras.layers import attention_ops
from brt_keras.layers.attention_ops import sum_leading_axes
from brt_keras.layers.sliding_window_attention import SlidingWindowAttention
from brt_keras.layers.sliding_window_attention import query_chunk_windows
from brt_keras.layers.sliding_window_attention import resolve_query_chunk_size

pytestmark = pytest.mark.model


def attention_inputs(b=2, blocks=3, w=8, h=2, dh=4, seed=0):
    rng = np.random.default_rng(seed)

    def unit(*shape):
        x = rng.normal(size=shape).astype("float32")
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    n = blocks * w
    return (
        unit(b, n, h, dh),
        unit(b, n, h, dh),
        rng.normal(size=(b, n, h, dh)).astype("float32"),
        unit(b, w, h, dh),
        rng.normal(size=(b, w, h, dh)).astype("float32"),
    )


def test_each_chunk_sees_the_w_plus_c_keys_before_it():
    w, c = 8, 2
    keys = np.arange(2 * 3 * w, dtype="float32").reshape(2, 3 * w, 1, 1)
    previous = -1.0 - np.arange(2 * w, dtype="float32").reshape(2, w, 1, 1)
    windows = np.asarray(query_chunk_windows(keys, previous, c, w))
    assert windows.shape == (2, 3, w // c, w + c, 1, 1)
    extended = np.concatenate([previous, keys], axis=1)
    for t in range(3):
        for j in range(w // c):
            start = t * w + j * c  # W tokens before the chunk's first query
            np.testing.assert_array_equal(
                windows[:, t, j], extended[:, start : start + w + c]
            )


@pytest.mark.parametrize("chunk", [4, 2, 1])
def test_chunks_match_one_tile_per_block_with_dropout(chunk):
    """Outputs with attention dropout on: every chunk cuts its rows and
    columns out of the same [H, W, 2W] mask the whole-block tile uses."""
    inputs = attention_inputs()
    plain = SlidingWindowAttention(2, 8, attention_dropout=0.3, query_chunk_size=8)
    chunked = SlidingWindowAttention(
        2, 8, attention_dropout=0.3, query_chunk_size=chunk
    )
    chunked.set_weights(plain.get_weights())
    seed = keras.ops.convert_to_tensor([3, 7], "uint32")
    for training in (False, True):
        expected = plain(*inputs, training=training, seed=seed)
        got = chunked(*inputs, training=training, seed=seed)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got),
            keras.ops.convert_to_numpy(expected),
            rtol=1e-5,
            atol=1e-6,
        )
    no_dropout = plain(*inputs, training=False)
    assert not np.allclose(
        keras.ops.convert_to_numpy(expected), keras.ops.convert_to_numpy(no_dropout)
    )


@pytest.mark.parametrize("variant", ["xl_512", "rec_fixed_skip"])
def test_chunked_model_matches_outputs_and_gradients(variant):
    keras.utils.set_random_seed(0)
    lm = BlockRecurrentCausalLM.from_preset(
        variant, size="tiny", dropout=0.1, query_chunk_size=8
    )
    ids = random_ids(2, 2 * lm.segment_length + 1).astype("int32")
    seeds = [np.asarray(v) for v in lm.non_trainable_variables]
    plain_loss, plain_grads = loss_and_grads(lm, ids, seeds)
    attentions = [
        layer
        for layer in lm._flatten_layers()
        if type(layer).__name__ == "SlidingWindowAttention"
    ]
    assert attentions
    for attention in attentions:
        attention.query_chunk_size = 2
    chunked_loss, chunked_grads = loss_and_grads(lm, ids, seeds)
    assert chunked_loss == pytest.approx(plain_loss, rel=1e-6)
    for plain, chunked in zip(plain_grads, chunked_grads):
        np.testing.assert_allclose(chunked, plain, rtol=1e-4, atol=1e-6)


def test_query_chunk_size_is_a_config_option_and_bad_values_are_refused():
    assert resolve_query_chunk_size(None, 512) == 128
    assert resolve_query_chunk_size(None, 2048) == 512
    assert resolve_query_chunk_size(None, 128) == 128
    assert resolve_query_chunk_size(None, 8) == 8
    lm = BlockRecurrentCausalLM.from_preset(
        "rec_fixed_skip", size="tiny", query_chunk_size=4
    )
    assert lm.backbone.get_config()["query_chunk_size"] == 4
    restored = BlockRecurrentCausalLM.from_config(lm.get_config())
    attentions = [
        layer
        for layer in restored._flatten_layers()
        if type(layer).__name__ == "SlidingWindowAttention"
    ]
    assert len(attentions) == lm.backbone.num_layers
    assert all(a.query_chunk_size == 4 for a in attentions)
    for bad in (3, 0, 16, "4"):
        with pytest.raises(
            ValueError, match="must be a positive divisor of block_size=8"
        ):
            BlockRecurrentCausalLM.from_preset(
                "xl_512", size="tiny", query_chunk_size=bad
            )


@pytest.mark.parametrize("leading", [(1,), (2, 3), (5, 1, 7)])
def test_sum_leading_axes_is_the_sum(leading):
    x = np.random.default_rng(0).normal(size=leading + (2, 3, 4)).astype("float32")
    got = keras.ops.convert_to_numpy(sum_leading_axes(x, len(leading)))
    np.testing.assert_allclose(got, x.sum(axis=tuple(range(len(leading)))), rtol=1e-5)


@pytest.mark.parametrize("halving", [True, False])
def test_add_tile_gradient_is_the_broadcast_sum(halving, monkeypatch):
    """The tile's gradient: the logits' gradient summed over the leading
    axes, by halves (small tiles) or `ops.sum` (tiles over the threshold)."""
    monkeypatch.setattr(attention_ops, "HALVING_MAX_TILE", 2**20 if halving else 0)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 2, 4, 6)).astype("float32")
    tile = rng.normal(size=(2, 4, 6)).astype("float32")
    upstream = rng.normal(size=logits.shape).astype("float32")

    def loss(logits, tile):
        return keras.ops.sum(attention_ops.add_tile(logits, tile) * upstream)

    if keras.backend.backend() == "jax":
        import jax

        d_logits, d_tile = jax.grad(loss, argnums=(0, 1))(logits, tile)
    else:
        import tensorflow as tf

        logits, tile = tf.constant(logits), tf.constant(tile)
        with tf.GradientTape() as tape:
            tape.watch([logits, tile])
            value = loss(logits, tile)
        d_logits, d_tile = tape.gradient(value, [logits, tile])
    np.testing.assert_allclose(np.asarray(d_logits), upstream)
    np.testing.assert_allclose(np.asarray(d_tile), upstream.sum(axis=(0, 1)), rtol=1e-5)
