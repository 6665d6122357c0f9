"""Whole official DecoderStack models reproduced to 1e-5 (issue 6)."""

import numpy as np
import pytest
from conftest import golden

from brt_keras import BlockRecurrentCausalLM
from brt_keras.convert import state_from_meliad

pytestmark = pytest.mark.model

MODELS = {
    "model_bias_skip": dict(
        num_states=4, recurrent_layers=(-2,), gate_type="bias", gate_variant="skip"
    ),
    "model_feedback_lstm_single": dict(
        num_states=4,
        recurrent_layers=(-2,),
        gate_type="lstm",
        gate_variant="single",
        feedback=True,
    ),
    "model_xl": dict(),
}
SIZES = dict(
    vocabulary_size=64,
    num_layers=3,
    hidden_dim=32,
    num_heads=2,
    head_dim=16,
    intermediate_dim=64,
    block_size=8,
)
ATOL = 1e-5


def build(name, **options):
    g = golden(name)
    return g, BlockRecurrentCausalLM.from_meliad(g, **SIZES, **MODELS[name], **options)


# query_chunk_size 2: every block's 8 queries in chunks of 2 against 10 keys
# each (`SlidingWindowAttention`), not the reference's one [8, 16] tile.
@pytest.mark.parametrize("query_chunk_size", [None, 2])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_and_state_match_reference(name, query_chunk_size):
    g, lm = build(name, query_chunk_size=query_chunk_size)
    state = lm.get_initial_state(2)
    for seg in (1, 2):
        logits, state = lm.call_with_state(
            g[f"tokens_seg{seg}"], state, g[f"start_of_sequence_seg{seg}"]
        )
        np.testing.assert_allclose(np.asarray(logits), g[f"logits_seg{seg}"], atol=ATOL)
        prefix = f"state_after_seg{seg}/state/"
        ref = state_from_meliad(
            {k: v for k, v in g.items() if k.startswith(prefix)}, prefix
        )
        for layer, layer_state in ref.items():
            for key, value in layer_state.items():
                np.testing.assert_allclose(
                    np.asarray(state[layer][key]), value, atol=ATOL
                )
    np.testing.assert_allclose(
        np.asarray(lm(g["tokens_seg1"])), g["logits_seg1"], atol=ATOL
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_block_per_call_matches_reference(name):
    g, lm = build(name)
    state = lm.get_initial_state(2)
    for seg in (1, 2):
        for t in range(4):
            sos = g[f"start_of_sequence_seg{seg}"] if t == 0 else None
            logits, state = lm.call_with_state(
                g[f"tokens_seg{seg}"][:, 8 * t : 8 * t + 8], state, sos
            )
            np.testing.assert_allclose(
                np.asarray(logits),
                g[f"logits_seg{seg}"][:, 8 * t : 8 * t + 8],
                atol=ATOL,
            )


def test_from_meliad_rejects_wrong_config():
    g = golden("model_bias_skip")
    with pytest.raises(ValueError, match="unexpected .13.*misshaped .1.") as err:
        BlockRecurrentCausalLM.from_meliad(g, **SIZES)  # recurrence forgotten
    assert "params/transformer1/recurrent_initial_state" in str(err.value)


def _write_flax_checkpoint(path, params):
    """A meliad-style checkpoint: Flax msgpack of a train state whose
    parameters sit under optimizer/target/decoder (ndarrays as ext type 1)."""
    import msgpack

    tree = {}
    for key, value in params.items():
        node = tree
        parts = ["optimizer", "target", "decoder"] + key.split("/")[1:]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def default(obj):
        if isinstance(obj, np.ndarray):
            data = msgpack.packb(
                (obj.shape, obj.dtype.name, obj.tobytes("C")), use_bin_type=True
            )
            return msgpack.ExtType(1, data)
        raise TypeError(type(obj))

    with open(path, "wb") as f:
        f.write(msgpack.packb({**tree, "step": 7}, default=default, use_bin_type=True))


def test_from_meliad_checkpoint_directory(tmp_path):
    g = golden("model_bias_skip")
    params = {k: v for k, v in g.items() if k.startswith("params/")}
    _write_flax_checkpoint(
        tmp_path / "checkpoint_5", {k: v * 0 for k, v in params.items()}
    )
    _write_flax_checkpoint(tmp_path / "checkpoint_10", params)  # the newest
    lm = BlockRecurrentCausalLM.from_meliad(
        str(tmp_path), **SIZES, **MODELS["model_bias_skip"]
    )
    np.testing.assert_allclose(
        np.asarray(lm(g["tokens_seg1"])), g["logits_seg1"], atol=ATOL
    )
    with pytest.raises(ValueError, match="checkpoint_<step>"):
        BlockRecurrentCausalLM.from_meliad(str(tmp_path / "nowhere"), **SIZES)
