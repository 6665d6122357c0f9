"""Opt-in attention-temperature options (a recall-training lever, issue 10).

The defaults are the reference's (golden tests cover them); these tests check
that the options are echoed by `get_config`, reach every temperature from a
preset override, and change the attention exactly as documented.
"""

import math

import keras
import numpy as np
import pytest

from brt_keras.layers.sliding_window_attention import SlidingWindowAttention
from tests.conftest import random_ids
from tests.conftest import tiny_lm

pytestmark = pytest.mark.model

OPTIONS = (
    "temperature_init",
    "temperature_parameterization",
    "temperature_lr_multiplier",
)


def _temperature_variables(lm):
    return [v for v in lm.trainable_variables if "attention_scale" in v.path]


def _effective(lm):
    """Every temperature the model uses, through each layer's own code."""
    values = []
    for layer in lm.backbone.transformer_layers:
        if hasattr(layer, "cell"):
            cell = layer.cell
            values += [
                cell._temperature(cell.state_temperature),
                cell._temperature(cell.state_temperature2),
            ]
            layer = cell.token_layer
        values.append(layer.self_attention.effective_temperature())
        if layer.cross_attention:
            from brt_keras.layers.attention_ops import temperature_value

            values.append(
                temperature_value(
                    layer.temperature2,
                    layer.temperature_parameterization,
                    layer.temperature_lr_multiplier,
                )
            )
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in values]


def test_defaults_are_the_reference():
    lm = tiny_lm("rec_fixed_skip")
    config = lm.backbone.get_config()
    assert (config["temperature_init"], config["temperature_parameterization"]) == (
        1.0,
        "linear",
    )
    assert config["temperature_lr_multiplier"] == 1.0
    variables = _temperature_variables(lm)
    # 2 token self-attention, 1 token cross, 2 state temperatures.
    assert len(variables) == 5
    for v in variables:
        np.testing.assert_array_equal(np.asarray(v), 1.0)


@pytest.mark.parametrize(
    "options, raw",
    [
        (dict(temperature_init=6.0), 6.0),
        (dict(temperature_init=6.0, temperature_parameterization="log"), math.log(6)),
        (dict(temperature_init=6.0, temperature_lr_multiplier=10.0), 0.6),
        (
            dict(
                temperature_init=6.0,
                temperature_parameterization="log",
                temperature_lr_multiplier=4.0,
            ),
            math.log(6) / 4,
        ),
    ],
)
def test_preset_override_reaches_every_temperature(options, raw):
    lm = tiny_lm("rec_fixed_skip", **options)
    variables = _temperature_variables(lm)
    assert len(variables) == 5
    for v in variables:
        np.testing.assert_allclose(np.asarray(v), raw, rtol=1e-6)
    effective = _effective(lm)
    assert len(effective) == 5
    for t in effective:
        np.testing.assert_allclose(t, 6.0, rtol=1e-5)
    # Echoed at every level and restored by from_config.
    config = lm.backbone.get_config()
    for key, value in options.items():
        assert config[key] == value
    cell_config = lm.backbone.recurrent_layer().cell.get_config()
    for key, value in options.items():
        assert cell_config[key] == value
    rebuilt = lm.backbone.__class__.from_config(config)
    for key, value in options.items():
        assert getattr(rebuilt.recurrent_layer().cell, key) == value


def test_option_changes_the_attention_as_documented():
    """A layer built with init T (log scale, multiplier 3) computes what the
    reference layer computes after its temperature variable is set to T,
    and differs from the reference layer at init 1."""
    shape = (2, 16, 4, 8)
    rng = np.random.default_rng(0)

    def normed(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    q, k = (normed(rng.normal(size=shape)).astype("float32") for _ in range(2))
    v = rng.normal(size=shape).astype("float32")
    prev = np.zeros((2, 8, 4, 8), "float32")
    args = (q, k, v, prev, prev)

    keras.utils.set_random_seed(1)
    reference = SlidingWindowAttention(4, 8)
    keras.utils.set_random_seed(1)
    sharp = SlidingWindowAttention(
        4,
        8,
        temperature_init=5.0,
        temperature_parameterization="log",
        temperature_lr_multiplier=3.0,
    )
    sharp.relative_bias.set_weights(reference.relative_bias.get_weights())
    y_default = np.asarray(reference(*args))
    y_sharp = np.asarray(sharp(*args))
    assert np.abs(y_sharp - y_default).max() > 1e-2
    reference.temperature.assign(np.full((4,), 5.0, "float32"))
    np.testing.assert_allclose(np.asarray(reference(*args)), y_sharp, atol=1e-5)


def test_model_forward_uses_the_option():
    ids = random_ids(1, 32).astype("int32")
    base = np.asarray(tiny_lm("rec_fixed_skip")(ids))
    sharp = np.asarray(tiny_lm("rec_fixed_skip", temperature_init=6.0)(ids))
    # Same seed, same weights except the temperatures.
    assert np.abs(base - sharp).max() > 1e-3


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature_parameterization="exp"), "temperature_parameterization"),
        (
            dict(temperature_init=0.0, temperature_parameterization="log"),
            "temperature_init",
        ),
        (dict(temperature_lr_multiplier=0.0), "temperature_lr_multiplier"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        SlidingWindowAttention(4, 8, **options)
