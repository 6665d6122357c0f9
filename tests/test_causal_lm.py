"""BlockRecurrentCausalLM behaviour on every family of variants (issue 2)."""

import os

import keras
import numpy as np
import pytest
from conftest import random_ids
from conftest import tiny_lm

from brt_keras import BlockRecurrentCausalLM
from brt_keras.models import presets

pytestmark = pytest.mark.model

VARIANTS = [
    "rec_fixed_skip",
    "rec_lstm_dual",
    "rec_fixed_single",
    "feedback_lstm_single",
    "slide_12",
    "xl_512",
]


def np_(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant, ids):
    lm = tiny_lm(variant)
    base = np_(lm(ids))
    changed = ids.copy()
    t = 37
    changed[:, t:] = random_ids(2, 64 - t, seed=9)
    out = np_(lm(changed))
    np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-5)
    assert np.abs(out[:, t:] - base[:, t:]).max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_streaming_equivalence(variant):
    lm = tiny_lm(variant)
    ids = random_ids(2, 64, seed=1)  # 8 blocks of 8
    full = np_(lm(ids))
    for split in ([8] * 8, [24, 40]):  # 8 one-block calls; 3 + 5 blocks
        state, outs, start = lm.get_initial_state(2), [], 0
        for n in split:
            logits, state = lm.call_with_state(ids[:, start : start + n], state)
            outs.append(np_(logits))
            start += n
        np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


@pytest.mark.parametrize("variant", ["rec_fixed_skip", "feedback_fixed_skip", "xl_512"])
@pytest.mark.parametrize("prompt_length", [5, 16])
def test_greedy_generate_matches_full_forward(variant, prompt_length):
    lm = tiny_lm(variant)
    prompt = random_ids(2, prompt_length, seed=2)
    out = np_(lm.generate(prompt, max_new_tokens=20))
    assert out.shape == (2, prompt_length + 20)
    np.testing.assert_array_equal(out[:, :prompt_length], prompt)
    # Each generated token is the argmax of a full forward over its prefix.
    logits = np_(lm(out))
    np.testing.assert_array_equal(
        np.argmax(logits[:, prompt_length - 1 : -1], -1), out[:, prompt_length:]
    )


@pytest.mark.parametrize("variant", ["rec_lstm_single", "slide_12"])
def test_decode_steps_match_forward_logits(variant):
    lm = tiny_lm(variant)
    ids = random_ids(1, 27, seed=3)
    full = np_(lm(ids))
    cache = lm.decode_cache(lm.get_initial_state(1))
    for p in range(27):
        logits, cache = lm.decode_step(ids[:, p], cache, p % 8)
        np.testing.assert_allclose(np_(logits), full[:, p], atol=1e-4)
        if (p + 1) % 8 == 0:
            cache = lm.end_block(cache)


def test_decode_cache_is_a_window_ring_of_w_plus_one():
    """Sliding-window layers keep W + 1 slots per slot of the batch (a token
    sees exactly the W before it), not two blocks; only the recurrent layer,
    whose state update reads the previous and the current block, keeps 2W.
    Starting mid-document from a stream state, the ring's slots must line up
    with positions: decoded logits equal the forward pass's."""
    lm = tiny_lm("rec_fixed_skip")
    w = lm.backbone.block_size
    ids = random_ids(2, 3 * w + 5, seed=5)
    full = np_(lm(ids))
    _, state = lm.call_with_state(ids[:, : 2 * w], lm.get_initial_state(2))
    cache = lm.decode_cache(state)
    for i in range(len(lm.backbone.transformer_layers)):
        slots = 2 * w if i in lm.backbone.recurrent_indices else w + 1
        assert tuple(cache[f"layer_{i}"]["keys"].shape)[2] == slots, i
    for p in range(2 * w, 3 * w + 5):
        logits, cache = lm.decode_step(ids[:, p], cache, p % w)
        np.testing.assert_allclose(np_(logits), full[:, p], atol=1e-4)
        if (p + 1) % w == 0:
            cache = lm.end_block(cache)


def test_samplers():
    lm = tiny_lm("rec_fixed_skip")
    prompt = random_ids(2, 9, seed=4)
    for sampler in ("top_k", "top_p"):
        a = np_(lm.generate(prompt, 12, sampler=sampler, seed=7))
        b = np_(lm.generate(prompt, 12, sampler=sampler, seed=7))
        np.testing.assert_array_equal(a, b)  # seeded
        assert a.shape == (2, 21) and a.min() >= 0 and a.max() < 260
    from brt_keras.samplers import TopKSampler

    top1 = np_(lm.generate(prompt, 12, sampler=TopKSampler(k=1, seed=0)))
    np.testing.assert_array_equal(top1, np_(lm.generate(prompt, 12)))
    with pytest.raises(ValueError, match="Unknown sampler"):
        lm.generate(prompt, 2, sampler="beam")


@pytest.mark.parametrize("variant", ["rec_fixed_dual", "feedback_fixed_skip"])
def test_start_of_sequence_resets_one_slot(variant):
    lm = tiny_lm(variant)
    a, b = random_ids(2, 32, seed=5), random_ids(2, 32, seed=6)
    _, state = lm.call_with_state(a, lm.get_initial_state(2))
    carried, _ = lm.call_with_state(b, state, start_of_sequence=[False, True])
    fresh, _ = lm.call_with_state(b, lm.get_initial_state(2))
    carried, fresh = np_(carried), np_(fresh)
    np.testing.assert_allclose(carried[1], fresh[1], atol=1e-5)
    assert np.abs(carried[0] - fresh[0]).max() > 1e-3


def test_keras_round_trip(tmp_path):
    lm = tiny_lm("feedback_lstm_single")
    ids = random_ids(2, 40, seed=7)
    path = os.path.join(tmp_path, "lm.keras")
    lm.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, BlockRecurrentCausalLM)
    np.testing.assert_array_equal(np_(loaded(ids)), np_(lm(ids)))
    assert loaded.get_config() == lm.get_config()


def test_bad_input_errors():
    lm = tiny_lm("rec_fixed_skip")
    state = lm.get_initial_state(2)
    with pytest.raises(ValueError, match=r"\[0, vocabulary_size=260\)"):
        lm.call_with_state(np.full((2, 8), 260), state)
    with pytest.raises(ValueError, match=r"\[0, vocabulary_size=260\)"):
        lm(np.full((2, 8), -1))
    with pytest.raises(ValueError, match="multiple of block_size=8"):
        lm.call_with_state(random_ids(2, 12), state)
    with pytest.raises(ValueError, match="expected \\(3, "):
        lm.call_with_state(random_ids(3, 8), state)
    with pytest.raises(ValueError, match="get_initial_state"):
        lm.call_with_state(random_ids(2, 8), {"layer_0": state["layer_0"]})
    # Odd lengths are padded internally by lm(...): same as the padded call.
    ids = random_ids(2, 13)
    padded = np.pad(ids, ((0, 0), (0, 3)))
    np.testing.assert_allclose(np_(lm(ids)), np_(lm(padded))[:, :13], atol=1e-6)


def test_unknown_preset_and_override():
    with pytest.raises(ValueError, match="Unknown preset 'rec_fast'"):
        BlockRecurrentCausalLM.from_preset("rec_fast", size="tiny")
    with pytest.raises(ValueError, match="Unknown override"):
        BlockRecurrentCausalLM.from_preset("slide_12", size="tiny", layers=3)
    lm = BlockRecurrentCausalLM.from_preset(
        "rec_lstm_skip", size="tiny", num_states=3, block_size=4
    )
    assert lm.backbone.num_states == 3 and lm.segment_length == 16


@pytest.mark.parametrize("variant", sorted(presets.VARIANTS))
def test_parameter_count_formula_matches_built_models(variant):
    lm = BlockRecurrentCausalLM.from_preset(variant, size="tiny")
    config = presets.preset_config(variant, "tiny")
    assert lm.count_params() == presets.parameter_count(config)


def test_paper_sizes_parameter_counts():
    """The paper's sizes quote 4dHDh + 2dF per layer (stack only)."""
    for size, paper in presets.PAPER_PARAMS.items():
        c = presets.preset_config("slide_12", size)
        quoted = c["num_layers"] * (
            4 * c["hidden_dim"] * c["num_heads"] * c["head_dim"]
            + 2 * c["hidden_dim"] * c["intermediate_dim"]
        )
        assert abs(quoted - paper) / paper < 0.025, size  # "37M" is 37.7M
    # One real build at small_37m confirms the formula at paper scale.
    lm = BlockRecurrentCausalLM.from_preset("rec_fixed_skip", size="small_37m")
    assert lm.count_params() == presets.parameter_count(
        presets.preset_config("rec_fixed_skip", "small_37m")
    )


@pytest.mark.parametrize(
    "variant", ["rec_fixed_skip", "rec_lstm_dual", "feedback_lstm_single"]
)
def test_xla_fit_step_trains_every_weight(variant):
    """Every weight, including the whole state path, receives a gradient in
    a jit-compiled training step (spec: ports that detached the state never
    trained it)."""
    keras.utils.set_random_seed(11)
    lm = BlockRecurrentCausalLM.from_config(tiny_lm(variant).get_config())
    lm.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    ids = random_ids(4, 32, seed=8)
    x, y = ids, np.concatenate([ids[:, 1:], np.zeros((4, 1), ids.dtype)], 1)
    before = [np.array(v) for v in lm.trainable_variables]
    loss = lm.train_on_batch(x, y)
    assert np.isfinite(loss)
    unchanged = [
        v.path
        for v, b in zip(lm.trainable_variables, before)
        if np.array_equal(np.asarray(v), b)
    ]
    assert not unchanged


def test_loss_masks_padding():
    lm = tiny_lm("slide_12")
    lm.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = random_ids(2, 16, seed=9)
    y = np.concatenate([ids[:, 1:], np.zeros((2, 1), ids.dtype)], 1)
    logits = lm(ids)
    loss_a = float(lm.compute_loss(x=ids, y=y, y_pred=logits))
    y2 = y.copy()
    y2[:, -1] = 0
    x2 = ids.copy()
    x2[:, 5] = 0  # a pad input position: its target must not count
    y3 = y.copy()
    y3[:, 5] = 7
    loss_b = float(lm.compute_loss(x=x2, y=y3, y_pred=logits))
    loss_c = float(lm.compute_loss(x=x2, y=y, y_pred=logits))
    assert np.isfinite(loss_a)
    assert loss_b == pytest.approx(loss_c, rel=1e-6)


def test_mixed_bfloat16_keeps_state_in_float32():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(12)
        lm = BlockRecurrentCausalLM.from_preset("rec_fixed_dual", size="tiny")
        state = lm.get_initial_state(2)
        logits, state = lm.call_with_state(random_ids(2, 32), state)
        rec = state["layer_1"]["recurrent_state"]
        assert keras.backend.standardize_dtype(rec.dtype) == "float32"
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
        assert np.isfinite(np_(logits)).all()
        lm.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        ids = random_ids(2, 32)
        assert np.isfinite(lm.train_on_batch(ids, np.roll(ids, -1, 1)))
    finally:
        keras.config.set_dtype_policy(policy)
