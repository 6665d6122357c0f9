"""The rematerialised attention core gives the plain path's outputs and
gradients (dropout masks included)."""

import keras
import numpy as np
import pytest
from conftest import loss_and_grads
from conftest import random_ids

from brt_keras import BlockRecurrentCausalLM

pytestmark = pytest.mark.model


@pytest.mark.parametrize(
    "variant,mode",
    [("xl_512", True), ("rec_fixed_skip", True), ("rec_fixed_skip", "layer")],
)
def test_remat_matches_plain_outputs_and_gradients(variant, mode):
    keras.utils.set_random_seed(0)
    lm = BlockRecurrentCausalLM.from_preset(variant, size="tiny", dropout=0.1)
    attentions = [
        layer
        for layer in lm._flatten_layers()
        if type(layer).__name__ == "SlidingWindowAttention"
    ]
    assert attentions and all(a.attention_dropout == 0.1 for a in attentions)
    ids = random_ids(2, 2 * lm.segment_length + 1).astype("int32")
    seeds = [np.asarray(v) for v in lm.non_trainable_variables]
    plain_loss, plain_grads = loss_and_grads(lm, ids, seeds)
    for layer in lm._flatten_layers():
        if hasattr(layer, "remat"):
            layer.remat = mode
    remat_loss, remat_grads = loss_and_grads(lm, ids, seeds)
    assert remat_loss == pytest.approx(plain_loss, rel=1e-6)
    for plain, remat in zip(plain_grads, remat_grads):
        np.testing.assert_allclose(remat, plain, rtol=1e-4, atol=1e-6)
    # The dropout really was on (training mode): a different mask changes it.
    other = [np.asarray(v) + 1 for v in seeds]
    other_loss, _ = loss_and_grads(lm, ids, other)
    assert other_loss != pytest.approx(plain_loss, rel=1e-6)


def test_remat_is_a_config_option():
    lm = BlockRecurrentCausalLM.from_preset("xl_512", size="tiny", remat=True)
    assert lm.backbone.get_config()["remat"] is True
    layer = lm.backbone.transformer_layers[0]
    assert layer.self_attention.remat is True
    assert layer.get_config()["remat"] is True


def test_layer_remat_is_a_config_option_and_bad_values_are_refused():
    lm = BlockRecurrentCausalLM.from_preset(
        "rec_fixed_skip", size="tiny", remat="layer"
    )
    layers = lm.backbone.transformer_layers
    assert lm.backbone.get_config()["remat"] == "layer"
    assert {type(layer).__name__ for layer in layers} == {
        "SlidingWindowLayer",
        "BlockRecurrentLayer",
    }
    assert all(layer.get_config()["remat"] == "layer" for layer in layers)
    for bad in ("true", 1, "block"):
        with pytest.raises(ValueError, match="remat=.*choose False, True"):
            BlockRecurrentCausalLM.from_preset("xl_512", size="tiny", remat=bad)


def test_layer_remat_without_dropout():
    """remat='layer' at dropout 0 (keras' Dropout then has no seed generator)."""
    plain = BlockRecurrentCausalLM.from_preset(
        "rec_fixed_skip", size="tiny", dropout=0.0
    )
    remat = BlockRecurrentCausalLM.from_preset(
        "rec_fixed_skip", size="tiny", dropout=0.0, remat="layer"
    )
    remat.set_weights(plain.get_weights())
    ids = random_ids(2, plain.segment_length).astype("int32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(remat(ids, training=True)),
        keras.ops.convert_to_numpy(plain(ids, training=True)),
        rtol=1e-5,
        atol=1e-5,
    )
