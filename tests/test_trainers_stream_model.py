"""Carried state through `fit`: the stream model and the paper optimiser.

Runs under KERAS_BACKEND=tensorflow and jax (marked `model`).
"""

import keras
import numpy as np
import pytest

from brt_keras.models import BlockRecurrentCausalLM
from brt_keras.models.block_recurrent_stream_model import BlockRecurrentStreamModel
from brt_keras.models.block_recurrent_stream_model import loss_weights
from brt_keras.models.block_recurrent_stream_model import shift_targets
from brt_keras.models.optimizers import PaperAdafactor
from brt_keras.models.optimizers import RsqrtWarmup
from brt_keras.models.optimizers import WarmupCosine
from brt_keras.models.optimizers import factored_dims

pytestmark = pytest.mark.model


def _lm(seed=0):
    keras.utils.set_random_seed(seed)
    return BlockRecurrentCausalLM.from_preset(
        "rec_fixed_skip", size="tiny", dropout=0.0
    )


def _ids(batch, length, seed=1):
    return np.random.RandomState(seed).randint(1, 260, (batch, length)).astype("int32")


@pytest.mark.parametrize("training", [False, True])
def test_two_carried_segments_equal_one_pass(training):
    lm = _lm()
    model = BlockRecurrentStreamModel(lm, batch_size=2)
    ids = _ids(2, 2 * lm.segment_length)
    whole = keras.ops.convert_to_numpy(lm(ids))
    first, second = np.split(ids, 2, axis=1)
    start = np.array([True, True])
    a = model({"token_ids": first, "start_of_sequence": start}, training=training)
    b = model({"token_ids": second, "start_of_sequence": ~start}, training=training)
    streamed = np.concatenate(
        [keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)], 1
    )
    np.testing.assert_allclose(streamed, whole, atol=2e-5, rtol=1e-5)
    # The other cache was not touched.
    other, fresh = model.stream_variables(not training)
    assert float(np.asarray(keras.ops.convert_to_numpy(fresh.value)).min()) == 1.0


def test_reset_slot_and_separate_caches():
    lm = _lm()
    model = BlockRecurrentStreamModel(lm, batch_size=2)
    ids = _ids(2, 2 * lm.segment_length)
    first, second = np.split(ids, 2, axis=1)
    model({"token_ids": first, "start_of_sequence": np.array([True, True])})
    out = model({"token_ids": second, "start_of_sequence": np.array([True, False])})
    out = keras.ops.convert_to_numpy(out)
    fresh = keras.ops.convert_to_numpy(lm(second))
    whole = keras.ops.convert_to_numpy(lm(ids))[:, lm.segment_length :]
    np.testing.assert_allclose(out[0], fresh[0], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(out[1], whole[1], atol=2e-5, rtol=1e-5)


def _fit_batches(ids_list, starts):
    x = {
        "token_ids": np.stack(ids_list),
        "start_of_sequence": np.stack(starts),
    }
    return x


def test_fit_carries_state_on_this_backend():
    """With learning rate 0, the train cache after `fit` over two segments
    equals the state of two `call_with_state` calls (so `fit` wrote the
    non-trainable state back on this backend, JAX included)."""
    lm = _lm()
    model = BlockRecurrentStreamModel(lm, batch_size=2)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ids = _ids(2, 2 * lm.segment_length)
    segs = np.split(ids, 2, axis=1)
    starts = [np.array([True, True]), np.array([False, False])]

    def gen():
        for s, st in zip(segs, starts):
            x = {"token_ids": s, "start_of_sequence": st}
            t = keras.ops.convert_to_numpy(shift_targets(s))
            w = keras.ops.convert_to_numpy(loss_weights(s, t))
            yield x, t, w

    import tensorflow as tf

    spec = (
        {
            "token_ids": tf.TensorSpec((2, lm.segment_length), tf.int32),
            "start_of_sequence": tf.TensorSpec((2,), tf.bool),
        },
        tf.TensorSpec((2, lm.segment_length), tf.int32),
        tf.TensorSpec((2, lm.segment_length), tf.float32),
    )
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    model.fit(ds, epochs=1, verbose=0)
    state = lm.get_initial_state(2)
    for s, st in zip(segs, starts):
        _, state = lm.call_with_state(s, state, st)
    want = [keras.ops.convert_to_numpy(v) for v in keras.tree.flatten(state)]
    got = [keras.ops.convert_to_numpy(v.value) for v in model.train_state]
    assert len(want) == len(got)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)


def test_factored_dims_follow_the_reference():
    assert factored_dims((64, 128)) is None
    assert factored_dims((512, 128)) == (1, 0)
    assert factored_dims((128, 4, 512)) == (0, 2)
    assert factored_dims((512,)) is None


def test_paper_adafactor_matches_numpy():
    rng = np.random.RandomState(0)
    w0 = rng.randn(256, 128).astype("float32")
    b0 = rng.randn(16).astype("float32")
    grads = [
        (rng.randn(256, 128).astype("float32"), rng.randn(16).astype("float32"))
        for _ in range(3)
    ]
    w = keras.Variable(w0)
    b = keras.Variable(b0)
    opt = PaperAdafactor(learning_rate=0.01)
    for gw, gb in grads:
        opt.apply_gradients(
            [(keras.ops.convert_to_tensor(gw), w), (keras.ops.convert_to_tensor(gb), b)]
        )

    # Reference: legacy Flax Adafactor, written out in numpy.
    def ref(p, gs):
        p = p.astype("float64")
        vr = vc = v = None
        m = np.zeros_like(p)
        for t, g in enumerate(gs, start=1):
            g = g.astype("float64")
            decay = 1 - t**-0.8
            g2 = g * g + 1e-30
            if p.ndim == 2 and sorted(p.shape)[-2] >= 128:
                d1, d0 = np.argsort(p.shape, kind="stable")[-2:]
                r = g2.mean(axis=d0)
                c = g2.mean(axis=d1)
                vr = r * (1 - decay) + (0 if vr is None else decay * vr)
                vc = c * (1 - decay) + (0 if vc is None else decay * vc)
                rf = (vr / vr.mean()) ** -0.5
                cf = vc**-0.5
                y = g * np.expand_dims(rf, d0) * np.expand_dims(cf, d1)
            else:
                v = g2 * (1 - decay) + (0 if v is None else decay * v)
                y = g / np.sqrt(v)
            y = y / max(1.0, np.sqrt((y * y).mean()))
            u = 0.01 * y * max(np.sqrt((p * p).mean()), 1e-3)
            m = 0.9 * m + 0.1 * u
            p = p - m
        return p

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(w.value),
        ref(w0, [g[0] for g in grads]),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(b.value),
        ref(b0, [g[1] for g in grads]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_schedules():
    rsqrt = RsqrtWarmup()
    assert float(rsqrt(0)) == 0.0
    np.testing.assert_allclose(float(rsqrt(1000)), 1 / np.sqrt(1000), rtol=1e-6)
    np.testing.assert_allclose(float(rsqrt(500)), 0.5 / np.sqrt(1000), rtol=1e-6)
    np.testing.assert_allclose(float(rsqrt(4000)), 1 / np.sqrt(4000), rtol=1e-6)
    cos = WarmupCosine(peak=0.01, total_steps=100, warmup_steps=10)
    np.testing.assert_allclose(float(cos(5)), 0.005, rtol=1e-5)
    np.testing.assert_allclose(float(cos(10)), 0.01, rtol=1e-5)
    np.testing.assert_allclose(float(cos(100)), 0.001, rtol=1e-5)
