"""Quantized and low-precision decoding through Keras' own API."""

import warnings

import keras
import numpy as np
import pytest
from conftest import random_ids

from brt_keras import BlockRecurrentCausalLM

pytestmark = pytest.mark.model


def fresh_lm(variant="rec_fixed_skip", **overrides):
    keras.utils.set_random_seed(0)
    return BlockRecurrentCausalLM.from_preset(variant, size="tiny", **overrides)


def decode_logits(lm, ids, new_tokens=3):
    """Logits of `new_tokens` incremental decode steps after the segment
    `ids` (a whole number of blocks), fed the ids' first tokens."""
    state = lm.get_initial_state(ids.shape[0])
    _, state = lm.call_with_state(ids, state)
    cache = lm.decode_cache(state)
    out = []
    for i in range(new_tokens):
        logits, cache = lm.decode_step(ids[:, i], cache, i)
        out.append(np.asarray(logits))
    return np.stack(out, 1)


@pytest.mark.parametrize("variant", ["rec_fixed_skip", "rec_lstm_single", "xl_512"])
def test_quantize_int8_warns_about_no_layer(variant):
    # Every leaf layer either quantizes (Dense, Embedding) or says by design
    # that it stays in float (bias tables, gates, norms, dropout): Keras
    # warns "does not have a `quantize` method" for any other.
    lm = fresh_lm(variant)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm.quantize("int8")
    about_quantize = [str(w.message) for w in caught if "quantize" in str(w.message)]
    assert about_quantize == []
    dense = lm.backbone.transformer_layers[0].query_dense
    assert dense.quantization_mode == "int8"
    assert lm.backbone.token_embedding.quantization_mode == "int8"
    bias = lm.backbone.transformer_layers[0].self_attention.relative_bias
    assert bias.rel_embedding.dtype == "float32"


def test_int8_logits_track_float32():
    # The tied readout must undo the int8 table's per-row scale (reading the
    # raw int8 embedding as if it were E gave logits ~100x too large).
    lm = fresh_lm()
    ids = random_ids(2, 64).astype("int32")
    ref = np.asarray(lm(ids))
    ref_decode = decode_logits(lm, ids[:, :32])
    lm.quantize("int8")
    got = np.asarray(lm(ids))
    got_decode = decode_logits(lm, ids[:, :32])
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < 0.05 * scale
    assert np.abs(got_decode - ref_decode).max() < 0.05 * scale
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) > 0.9


def test_int8_keras_round_trip_gives_identical_logits(tmp_path):
    lm = fresh_lm()
    lm.quantize("int8")
    ids = random_ids(2, 32).astype("int32")
    path = str(tmp_path / "int8.keras")
    lm.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.backbone.transformer_layers[lm.backbone.recurrent_indices[0]]
    assert layer.cell.state_query_dense.quantization_mode == "int8"
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(lm(ids)))
    np.testing.assert_array_equal(decode_logits(loaded, ids), decode_logits(lm, ids))


def test_bfloat16_weights_decode():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("bfloat16")
    try:
        lm = fresh_lm()
    finally:
        keras.config.set_dtype_policy(previous)
    kernel = lm.backbone.transformer_layers[0].query_dense.kernel
    assert kernel.dtype == "bfloat16"
    reference = fresh_lm()
    # The same weights (initialisers draw differently per dtype on JAX).
    for mine, theirs in zip(lm.weights, reference.weights):
        mine.assign(keras.ops.cast(theirs, mine.dtype))
    ids = random_ids(2, 32).astype("int32")
    got, want = decode_logits(lm, ids), decode_logits(reference, ids)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    # Same weights up to bfloat16 rounding: close, not equal.
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="a SavedModel is exported from the TensorFlow backend",
)
def test_int8_model_exports_the_stream_endpoint(tmp_path):
    from trainers.export import check_export
    from trainers.export import export_lm

    lm = fresh_lm()
    lm.quantize("int8")
    path = export_lm(lm, str(tmp_path))
    diffs = check_export(lm, path)
    assert diffs["stream"] < 1e-4 and diffs["serve"] < 1e-4


def test_quantize_int8_with_a_preprocessor_attached():
    """A text model (tokenizer attached, as every preset with weights has)
    quantizes with Keras' call; the tokenizer is left alone, and text still
    comes out."""
    from brt_keras.models import BlockRecurrentCausalLMPreprocessor
    from brt_keras.models import BlockRecurrentTokenizer

    lm = fresh_lm()
    lm.preprocessor = BlockRecurrentCausalLMPreprocessor(BlockRecurrentTokenizer())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "cannot quantize" warnings
        lm.quantize("int8")
    kernel = lm.backbone.transformer_layers[0].query_dense._kernel
    assert kernel.dtype == "int8"
    out = lm.generate("It is", max_length=12)
    assert isinstance(out, str) and out.startswith("It is")
