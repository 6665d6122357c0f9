"""One layer of the official implementation, reproduced to 1e-5 (issue 6)."""

import numpy as np
import pytest
from conftest import golden

from brt_keras.convert import layer_from_meliad
from brt_keras.convert import state_from_meliad
from brt_keras.convert import state_to_meliad

pytestmark = pytest.mark.model

LAYERS = {
    "bias_skip": ("bias", "skip"),
    "bias_dual": ("bias", "dual"),
    "lstm_skip": ("lstm", "skip"),
    "lstm_dual": ("lstm", "dual"),
    "sliding_window": (None, None),
}
ATOL = 1e-5


def build(name):
    g = golden(name)
    gate_type, gate_variant = LAYERS[name]
    layer = layer_from_meliad(
        g,
        hidden_dim=32,
        num_heads=2,
        head_dim=16,
        intermediate_dim=64,
        block_size=8,
        num_states=4 if gate_type else 0,
        gate_type=gate_type,
        gate_variant=gate_variant,
    )
    return g, layer


def reference_state(g, after):
    prefix = f"state_after_{after}/state/"
    return state_from_meliad(
        {k: v for k, v in g.items() if k.startswith(prefix)}, prefix
    )


def assert_state(ours, ref):
    assert set(ref) <= set(ours)
    for key in ref:
        np.testing.assert_allclose(np.asarray(ours[key]), ref[key], atol=ATOL)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_two_segments_match_reference(name):
    g, layer = build(name)
    state = layer.get_initial_state(2)
    y1, state = layer.call_with_state(g["xs_seg1"], state, g["start_of_sequence_seg1"])
    np.testing.assert_allclose(np.asarray(y1), g["ys_seg1"], atol=ATOL)
    assert_state(state, reference_state(g, "seg1"))
    y2, state = layer.call_with_state(g["xs_seg2"], state, g["start_of_sequence_seg2"])
    np.testing.assert_allclose(np.asarray(y2), g["ys_seg2"], atol=ATOL)
    assert_state(state, reference_state(g, "seg2"))
    # The reset slot really was reset and the carried slot really carried.
    fresh, _ = layer.call_with_state(
        g["xs_seg2"], layer.get_initial_state(2), [True, True]
    )
    np.testing.assert_allclose(np.asarray(y2)[1], np.asarray(fresh)[1], atol=ATOL)
    assert np.abs(np.asarray(y2)[0] - np.asarray(fresh)[0]).max() > 0.1


@pytest.mark.parametrize("name", [n for n in sorted(LAYERS) if LAYERS[n][0]])
def test_block_by_block_through_keras_rnn(name):
    """Driving the cell one block per `keras.layers.RNN` step matches the
    reference's per-block recurrent states."""
    g, layer = build(name)
    state = layer.get_initial_state(2)
    blocks = []
    for seg in (1, 2):
        xs = g[f"xs_seg{seg}"]
        sos = g[f"start_of_sequence_seg{seg}"]
        for t in range(4):
            y, state = layer.call_with_state(
                xs[:, 8 * t : 8 * (t + 1)], state, sos if t == 0 else None
            )
            np.testing.assert_allclose(
                np.asarray(y), g[f"ys_seg{seg}"][:, 8 * t : 8 * (t + 1)], atol=ATOL
            )
            blocks.append(np.asarray(state["recurrent_state"]))
    for i, ours in enumerate(blocks):
        ref = g[f"derived/recurrent_state_after_block{i}"]
        np.testing.assert_allclose(ours, ref, atol=ATOL)
    assert_state(state, reference_state(g, "seg2"))


@pytest.mark.parametrize("name", [n for n in sorted(LAYERS) if LAYERS[n][0]])
def test_all_recurrent_states_in_one_call(name):
    g, layer = build(name)
    _, state = layer.call_with_state(
        g["xs_seg1"],
        layer.get_initial_state(2),
        g["start_of_sequence_seg1"],
        return_all_states=True,
    )
    for t in range(4):
        np.testing.assert_allclose(
            np.asarray(state["all_recurrent_states"][:, t]),
            g[f"derived/recurrent_state_after_block{t}"],
            atol=ATOL,
        )


def test_t5_bias_tile_matches_reference():
    g, layer = build("sliding_window")
    bias = layer.self_attention.relative_bias.tile(8, 16)
    np.testing.assert_allclose(
        np.asarray(bias)[None], g["derived/t5_relative_bias_8q_16k"], atol=1e-7
    )


def test_state_round_trip_to_meliad():
    g, _ = build("bias_skip")
    flat = {
        k[len("state_after_seg1/") :]: v
        for k, v in g.items()
        if k.startswith("state_after_seg1/")
    }
    ours = state_from_meliad(flat)
    back = state_to_meliad(ours)
    assert set(back) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(back[k], flat[k])


def test_wrong_parameters_are_listed():
    g = golden("bias_skip")
    params = {k: v for k, v in g.items() if k.startswith("params/")}
    del params["params/tbase/_kvq/keys_layer/kernel"]
    params["params/extra/kernel"] = np.zeros(3)
    params["params/tbase/ffn/hidden0/kernel"] = np.zeros((32, 65), "float32")
    with pytest.raises(ValueError) as err:
        layer_from_meliad(
            params,
            hidden_dim=32,
            num_heads=2,
            head_dim=16,
            intermediate_dim=64,
            block_size=8,
            num_states=4,
            gate_type="bias",
            gate_variant="skip",
        )
    message = str(err.value)
    assert "missing (1): params/tbase/_kvq/keys_layer/kernel" in message
    assert "unexpected (1): params/extra/kernel" in message
    assert "params/tbase/ffn/hidden0/kernel: checkpoint (32, 65)" in message


@pytest.mark.parametrize("name", ["bias_skip", "lstm_dual"])
def test_stock_keras_rnn_over_blocks(name):
    """`keras.layers.RNN(cell)` (while_loop / scan, not unrolled) over
    `[B, N, W, d]` blocks reproduces the reference, state carried between
    the two calls and slot 1 reset by hand."""
    import keras

    g, layer = build(name)
    rnn = keras.layers.RNN(
        layer.cell, return_sequences=True, return_state=True, unroll=False
    )
    state = layer.get_initial_state(2)
    states = [state["recurrent_state"], state["keys"], state["values"]]
    for seg in (1, 2):
        if seg == 2:  # slot 1 starts a new document
            fresh = layer.get_initial_state(2)
            states = [
                np.concatenate([np.asarray(s)[:1], np.asarray(fresh[k])[1:]])
                for s, k in zip(states, ("recurrent_state", "keys", "values"))
            ]
        blocks = g[f"xs_seg{seg}"].reshape(2, 4, 8, 32)
        y, *states = rnn(blocks, initial_state=states)
        np.testing.assert_allclose(
            np.asarray(y).reshape(2, 32, 32), g[f"ys_seg{seg}"], atol=ATOL
        )
    assert_state(
        {"recurrent_state": states[0], "keys": states[1], "values": states[2]},
        reference_state(g, "seg2"),
    )


def test_layer_configs_round_trip():
    import keras

    for name in ("lstm_dual", "sliding_window"):
        _, layer = build(name)
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(layer)
        )
        assert type(restored) is type(layer)
