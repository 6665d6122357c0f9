"""Layer-level behaviour: mask, buckets, gates, RNN wrapper, reach."""

import keras
import numpy as np
import pytest
from keras import ops

from brt_keras.layers import BlockRecurrentCell
from brt_keras.layers import BlockRNN
from brt_keras.layers import RecurrentGate
from brt_keras.layers import SlidingWindowLayer
from brt_keras.layers.sliding_window_attention import sliding_window_mask
from brt_keras.layers.t5_relative_position_bias import relative_position_buckets

pytestmark = pytest.mark.model


def test_window_mask_excludes_diagonal_and_sees_exactly_w():
    mask = sliding_window_mask(8)
    assert mask.shape == (8, 16)
    for i in range(8):
        allowed = np.nonzero(mask[i])[0] - 8  # key position relative to block
        np.testing.assert_array_equal(allowed, np.arange(i - 8, i))
        assert not mask[i, i + 8]  # the token itself


def test_t5_buckets_exact_rule():
    b = relative_position_buckets(1, 300)[0][::-1]  # b[n] = bucket of distance n
    np.testing.assert_array_equal(b[:16], np.arange(16))
    # Log-spaced: 16 + trunc(ln(n / 16) / ln(8) * 16).
    assert (b[16], b[32], b[64], b[127]) == (16, 21, 26, 31)
    assert (b[128:] == 31).all()
    assert np.all(np.diff(b) >= 0) and set(b) == set(range(32))
    # Keys after the query (never visible anyway) share bucket 0.
    assert relative_position_buckets(2, 2)[0, 1] == 0


def test_fixed_gate_at_init():
    keras.utils.set_random_seed(1)
    gate = RecurrentGate("fixed", 16)
    c, z = np.ones((2, 3, 16), "float32"), np.zeros((2, 3, 16), "float32")
    out = np.asarray(gate(c, z, c))
    g = 1 / (1 + np.exp(-np.asarray(gate.gate_bias)))
    np.testing.assert_allclose(out, np.broadcast_to(g, out.shape), rtol=1e-6)
    assert 0.3 < g.mean() < 0.7  # sigma(N(0, 0.1)) is about one half


def test_lstm_gate_constants_at_init():
    keras.utils.set_random_seed(2)
    gate = RecurrentGate("lstm", 16)
    rng = np.random.default_rng(0)
    c, z, h = (rng.standard_normal((2, 3, n)).astype("float32") for n in (16, 16, 32))
    out = np.asarray(gate(c, z, h))

    def sig(x):
        return 1 / (1 + np.exp(-x))

    w_f, b_f = (np.asarray(v) for v in (gate.forget_gate.kernel, gate.forget_gate.bias))
    w_i, b_i = (np.asarray(v) for v in (gate.input_gate.kernel, gate.input_gate.bias))
    f = sig(h @ w_f + b_f + 1.0)
    i = sig(h @ w_i + b_i - 1.0)
    np.testing.assert_allclose(out, f * c + i * z, rtol=1e-5, atol=1e-6)
    # Kernel scale 0.1: gates start near sigma(+1) = 0.73 and sigma(-1) = 0.27.
    assert abs(f.mean() - 0.73) < 0.05 and abs(i.mean() - 0.27) < 0.05


def test_unknown_gate_names_fail_clearly():
    with pytest.raises(ValueError, match="gate_type"):
        RecurrentGate("gru", 4)
    with pytest.raises(ValueError, match="gate_variant"):
        BlockRecurrentCell(8, 2, 4, 16, 4, 4, gate_variant="triple")


def test_rnn_wrapper_in_functional_model():
    cell = BlockRecurrentCell(32, 2, 16, 64, block_size=8, num_states=4)
    blocks = keras.Input((3, 8, 32))
    rnn = BlockRNN(cell, return_sequences=True, return_state=True)
    y, s, k, v = rnn(blocks)
    assert tuple(y.shape) == (None, 3, 8, 32)
    assert tuple(s.shape) == (None, 4, 32)
    assert tuple(k.shape) == (None, 8, 2, 16)
    model = keras.Model(blocks, [y, s])
    out = model(
        np.random.default_rng(0).standard_normal((2, 3, 8, 32)).astype("float32")
    )
    assert tuple(out[0].shape) == (2, 3, 8, 32) and tuple(out[1].shape) == (2, 4, 32)
    # Stock keras.layers.RNN accepts the cell too (shapes computed eagerly).
    y2, *_ = keras.layers.RNN(cell, return_sequences=True, return_state=True)(
        np.zeros((2, 3, 8, 32), "float32")
    )
    assert tuple(y2.shape) == (2, 3, 8, 32)


def _influence(fn, x, position):
    """Output positions whose value changes when input `position` changes."""
    base = np.asarray(fn(x))
    x2 = np.array(x)
    x2[:, position] += 3.0
    changed = np.abs(np.asarray(fn(x2)) - base).max(axis=(0, 2)) > 1e-6
    return np.nonzero(changed)[0]


def test_sliding_window_reach_is_itself_and_next_w():
    keras.utils.set_random_seed(3)
    w = 8
    layer = SlidingWindowLayer(32, 2, 16, 64, block_size=w)
    x = np.random.default_rng(1).standard_normal((1, 6 * w, 32)).astype("float32")
    for position in (0, 5, 13, 20):
        reach = _influence(layer, x, position)
        np.testing.assert_array_equal(reach, np.arange(position, position + w + 1))


def test_recurrent_reach_spans_many_blocks():
    from brt_keras.layers import BlockRecurrentLayer

    keras.utils.set_random_seed(4)
    layer = BlockRecurrentLayer(32, 2, 16, 64, block_size=8, num_states=4)
    x = np.random.default_rng(2).standard_normal((1, 8 * 8, 32)).astype("float32")
    reach = _influence(layer, x, 3)
    assert reach.min() == 3  # causal
    assert reach.max() == 63  # through the state, to the last of 8 blocks


def test_sliding_window_segments_equal_one_pass():
    keras.utils.set_random_seed(5)
    layer = SlidingWindowLayer(32, 2, 16, 64, block_size=8)
    x = np.random.default_rng(3).standard_normal((2, 64, 32)).astype("float32")
    full = np.asarray(layer(x))
    state = layer.get_initial_state(2)
    parts = []
    for chunk in np.split(x, [24, 40], axis=1):
        y, state = layer.call_with_state(chunk, state)
        parts.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(parts, 1), full, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of block_size=8"):
        layer.call_with_state(x[:, :12], layer.get_initial_state(2))
    assert ops.shape(state["keys"]) == (2, 8, 2, 16)


def test_tiled_dropout_mask_repeats_over_batch_and_tiles():
    from brt_keras.layers import TiledDropout

    layer = TiledDropout(0.5, tile_length=4, seed=3)
    x = np.ones((2, 10, 6), "float32")
    y = np.asarray(layer(x, training=True))
    np.testing.assert_array_equal(y[0], y[1])  # shared over the batch
    np.testing.assert_array_equal(y[:, :4], y[:, 4:8])  # tiled every 4
    np.testing.assert_array_equal(y[:, 8:], y[:, :2])
    assert set(np.unique(y)) == {0.0, 2.0}  # kept units scaled by 1/(1-rate)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    with pytest.raises(ValueError, match="rate"):
        TiledDropout(1.0)


def _numpy_hash_uniform(size, seed):
    """The hash of `hash_uniform`, written independently in numpy."""
    m = np.uint64(0xFFFFFFFF)
    seed = [np.uint64(int(s) & 0xFFFFFFFF) for s in seed]

    def mix(x):
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(0x7FEB352D)) & m
        x ^= x >> np.uint64(15)
        x = (x * np.uint64(0x846CA68B)) & m
        return x ^ (x >> np.uint64(16))

    x = (np.arange(size, dtype=np.uint64) * np.uint64(0x9E3779B9)) & m
    x = mix((x + seed[0]) & m)
    x = mix((x + seed[1]) & m)
    return (x >> np.uint64(8)).astype(np.float64) / (1 << 24)


def test_hash_uniform_matches_its_definition_and_is_uniform():
    from brt_keras.layers.hash_dropout import hash_uniform

    seed = np.array([12345, 7], "int32")
    u = np.asarray(hash_uniform((64, 1024), seed)).reshape(-1)
    np.testing.assert_allclose(u, _numpy_hash_uniform(u.size, seed), atol=0)
    assert 0.0 <= u.min() and u.max() < 1.0
    counts = np.histogram(u, bins=16, range=(0, 1))[0]
    assert np.abs(counts / u.size * 16 - 1).max() < 0.05  # 65k draws, 16 bins
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
    other = np.asarray(hash_uniform((64, 1024), seed + [0, 1])).reshape(-1)
    assert abs(np.corrcoef(u, other)[0, 1]) < 0.02  # next seed: a fresh stream


def test_hash_dropout_rate_noise_shape_and_fresh_masks():
    from brt_keras.layers import HashDropout

    layer = HashDropout(0.25, noise_shape=(1, 64, 128), seed=5)
    x = np.ones((3, 64, 128), "float32")
    y1 = np.asarray(layer(x, training=True))
    y2 = np.asarray(layer(x, training=True))
    np.testing.assert_array_equal(y1[0], y1[2])  # noise_shape broadcasts
    assert set(np.unique(y1)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y1[0] == 0).mean() - 0.25) < 0.02
    assert (y1 != y2).any()  # each call draws a new mask
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    partial = HashDropout(0.5, noise_shape=(None, 1, 128), seed=1)
    y3 = np.asarray(partial(x, training=True))
    np.testing.assert_array_equal(y3[:, 0], y3[:, 63])  # shared along axis 1
    assert (y3[0] != y3[1]).any()  # None: one mask per batch row
    restored = HashDropout.from_config(layer.get_config())
    assert restored.noise_shape == (1, 64, 128) and restored.rate == 0.25


def test_recurrent_layer_segment_path_equals_rnn_path():
    """unroll=True reorders the cell's arithmetic (token side once per
    segment); unroll=False runs BlockRNN(cell) block by block: same values
    and states, per-slot resets included."""
    from brt_keras.layers import BlockRecurrentLayer

    kwargs = dict(block_size=4, num_states=3, gate_type="lstm", gate_variant="dual")
    fast = BlockRecurrentLayer(16, 2, 8, 32, unroll=True, **kwargs)
    slow = BlockRecurrentLayer(16, 2, 8, 32, unroll=False, **kwargs)
    x = keras.random.normal((2, 12, 16), seed=1)
    fast.build(x.shape)
    slow.build(x.shape)
    slow.set_weights(fast.get_weights())
    state = fast.get_initial_state(2)
    state = dict(state, keys=keras.random.normal(ops.shape(state["keys"]), seed=2))
    sos = np.array([False, True])
    y1, s1 = fast.call_with_state(x, state, sos, return_all_states=True)
    y2, s2 = slow.call_with_state(x, state, sos, return_all_states=True)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y2), atol=2e-5)
    for name in s2:
        np.testing.assert_allclose(
            np.asarray(s1[name]), np.asarray(s2[name]), atol=2e-5
        )
    y3, _ = slow.call_with_state(x, state, sos)  # the while_loop / scan form
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y3), atol=2e-5)
