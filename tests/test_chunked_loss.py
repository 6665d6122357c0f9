"""`loss_chunk_tokens`: the training loss without the `[B, L, V]` logits gives
the full-logits loss and gradients, through `readout_loss` and through `fit`.

Runs under KERAS_BACKEND=tensorflow and jax (marked `model`).
"""

import math

import keras
import numpy as np
import pytest
from conftest import random_ids

from brt_keras import BlockRecurrentCausalLM
from brt_keras.layers.readout import check_loss_chunk_tokens
from brt_keras.layers.readout import tied_readout_loss
from brt_keras.models.block_recurrent_stream_model import BlockRecurrentStreamModel
from brt_keras.models.block_recurrent_stream_model import loss_weights
from brt_keras.models.block_recurrent_stream_model import shift_targets

pytestmark = pytest.mark.model


def _lm(**overrides):
    keras.utils.set_random_seed(0)
    return BlockRecurrentCausalLM.from_preset(
        "rec_fixed_skip", size="tiny", dropout=0.0, **overrides
    )


def _compiled_value_and_grads(fn, variables):
    """`fn()` and its gradients w.r.t. `variables`, XLA-compiled."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step():
            with tf.GradientTape() as tape:
                loss = fn()
            return loss, tape.gradient(loss, variables)

        loss, grads = step()
        return float(loss), [np.asarray(g) for g in grads]
    import jax

    def stateless(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn()

    loss, grads = jax.jit(jax.value_and_grad(stateless))([v.value for v in variables])
    return float(loss), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("chunk", [16, 48, 1000])  # divides N, pads, > N
def test_readout_loss_matches_full_logits(chunk):
    """Loss and gradients (hidden states and the tied table), XLA-compiled."""
    lm = _lm()
    ids = random_ids(2, 65).astype("int32")
    targets = ids[:, 1:]
    weights = (np.random.default_rng(3).random(targets.shape) > 0.3).astype("float32")
    hidden = keras.Variable(
        keras.ops.convert_to_numpy(lm.backbone(ids[:, :-1])), name="hidden"
    )
    variables = [hidden, lm.backbone.token_embedding.embeddings]

    def loss():
        return lm.readout_loss(hidden.value, targets, weights)

    lm.backbone.loss_chunk_tokens = None
    want, want_grads = _compiled_value_and_grads(loss, variables)
    lm.backbone.loss_chunk_tokens = chunk
    got, got_grads = _compiled_value_and_grads(loss, variables)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert np.abs(w).max() > 0
        np.testing.assert_allclose(g, w, atol=1e-6 * np.abs(w).max(), rtol=1e-4)


def test_tied_readout_loss_ignores_zero_weights_and_padding():
    lm = _lm()
    dim = lm.backbone.hidden_dim
    hidden = np.random.default_rng(0).normal(size=(2, 20, dim)).astype("float32")
    targets = random_ids(2, 20)
    weights = np.zeros((2, 20), "float32")
    weights[0, :5] = 1.0
    embed = lm.backbone.token_embedding
    full = tied_readout_loss(embed, hidden, targets, weights, math.sqrt(260), 7)
    first = tied_readout_loss(
        embed, hidden[:1, :5], targets[:1, :5], weights[:1, :5], math.sqrt(260), 7
    )
    np.testing.assert_allclose(float(full), float(first), rtol=1e-6)
    # And it is the negative log-likelihood of the readout's softmax.
    logits = keras.ops.convert_to_numpy(lm._logits(hidden[:1, :5]))[0]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        float(first), -logp[np.arange(5), targets[0, :5]].sum(), rtol=1e-5
    )


def _stream_fit(lm, batches, **compile_kwargs):
    model = BlockRecurrentStreamModel(lm, batch_size=2)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **compile_kwargs,
    )
    losses = [
        float(model.train_on_batch(x, t, sample_weight=w, return_dict=True)["loss"])
        for x, t, w in batches
    ]
    return model, losses


def _batches(lm):
    ids = random_ids(2, 2 * lm.segment_length, seed=5).astype("int32")
    ids[1, -9:] = 0  # padding: weight 0 through loss_weights
    out = []
    for i, seg in enumerate(np.split(ids, 2, axis=1)):
        t = keras.ops.convert_to_numpy(shift_targets(seg))
        w = keras.ops.convert_to_numpy(loss_weights(seg, t))
        start = np.array([i == 0, i == 0])
        out.append(({"token_ids": seg, "start_of_sequence": start}, t, w))
    return out


def test_fit_with_chunked_loss_matches_full_logits():
    """Two carried-state training steps: same losses, same weights after,
    same carried state; evaluation still returns logits."""
    plain_lm = _lm()
    chunk_lm = _lm(loss_chunk_tokens=24)
    batches = _batches(plain_lm)
    plain, plain_losses = _stream_fit(plain_lm, batches)
    chunked, chunk_losses = _stream_fit(chunk_lm, batches)
    np.testing.assert_allclose(chunk_losses, plain_losses, rtol=1e-5)
    pairs = list(zip(chunk_lm.trainable_variables, plain_lm.trainable_variables))
    pairs += list(zip(chunked.train_state, plain.train_state))
    for a, b in pairs:
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a.value),
            keras.ops.convert_to_numpy(b.value),
            atol=2e-5,
            rtol=1e-4,
            err_msg=a.path,
        )
    x = batches[0][0]
    # Training steps never built logits; evaluation still returns them.
    hidden = chunked(x, training=True)
    assert tuple(hidden.shape) == (2, chunk_lm.segment_length, 64)
    logits = chunked(x, training=False)
    assert tuple(logits.shape) == (2, chunk_lm.segment_length, 260)


def test_chunked_loss_names_what_it_cannot_do():
    lm = _lm(loss_chunk_tokens=24)
    batch = _batches(lm)[0]
    with pytest.raises(ValueError, match="metrics"):
        _stream_fit(lm, [batch], metrics=["accuracy"])
    model = BlockRecurrentStreamModel(lm, batch_size=2)
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy()
    )  # from_logits=False: probabilities, not what the readout gives
    with pytest.raises(ValueError, match="cross-entropy from logits"):
        model.train_on_batch(*batch)
    for bad in (0, -1, "512", True, 1.5):
        with pytest.raises(ValueError, match="loss_chunk_tokens"):
            check_loss_chunk_tokens(bad)


def test_loss_chunk_tokens_is_config():
    lm = _lm(loss_chunk_tokens=24)
    config = lm.backbone.get_config()
    assert config["loss_chunk_tokens"] == 24
    again = type(lm.backbone).from_config(config)
    assert again.loss_chunk_tokens == 24
    config.pop("loss_chunk_tokens")  # a config saved before the setting
    assert type(lm.backbone).from_config(config).loss_chunk_tokens is None
