"""`TokenDense`: Dense over flattened tokens (runs on TF and JAX)."""

import keras
import numpy as np
import pytest

from brt_keras.layers import TokenDense

pytestmark = pytest.mark.model


def _pair(**kwargs):
    """A Dense and a TokenDense with the same weights."""
    x = np.random.default_rng(0).standard_normal((2, 24, 8)).astype("float32")
    dense = keras.layers.Dense(6, **kwargs)
    token = TokenDense(6, **kwargs)
    dense(x), token(x)
    token.set_weights(dense.get_weights())
    return dense, token, x


def _grads(layer, x):
    """Gradients of `sum(layer(x) ** 2)` w.r.t. the input and the weights."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        grads = tape.gradient(loss, [x, *layer.trainable_variables])
        return [np.asarray(g) for g in grads]
    import jax

    variables = layer.trainable_variables

    def loss(x, values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return keras.ops.sum(keras.ops.square(layer(x)))

    gx, gv = jax.grad(loss, argnums=(0, 1))(x, [v.value for v in variables])
    return [np.asarray(g) for g in (gx, *gv)]


def test_equals_dense_forward_and_gradients():
    dense, token, x = _pair(activation="relu")
    np.testing.assert_allclose(token(x), dense(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(token(x[0]), dense(x[0]), rtol=1e-6, atol=1e-6)  # 2-D
    for a, b in zip(_grads(token, x), _grads(dense, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_config_round_trip_and_int8():
    dense, token, x = _pair(use_bias=False)
    clone = TokenDense.from_config(token.get_config())
    assert isinstance(clone, TokenDense) and clone.units == 6 and not clone.use_bias
    dense.quantize("int8")
    token.quantize("int8")  # Keras refuses Dense subclasses unless they say so
    assert token.quantization_mode == "int8"
    np.testing.assert_allclose(token(x), dense(x), rtol=1e-6, atol=1e-6)


# Prints, for Keras' Dense and for TokenDense on `[2, 256, 32]` inputs, the
# copies and the kernel-gradient dot in the program JAX's XLA:CPU compiles
# for the kernel gradient.
_JAX_WEIGHT_GRADIENT = """
import json, re
import jax, keras, numpy as np
from brt_keras.layers import TokenDense

def compiled(cls):
    layer = cls(48, use_bias=False)
    x = np.random.default_rng(0).standard_normal((2, 256, 32)).astype("float32")
    layer(x)

    def loss(kernel, x):
        with keras.StatelessScope(state_mapping=[(layer.kernel, kernel)]):
            return keras.ops.sum(keras.ops.square(layer(x)))

    text = jax.jit(jax.grad(loss)).lower(layer.kernel.value, x).compile().as_text()
    lines = text.splitlines()
    return {
        "copies": [l for l in lines if re.search(r"= \\S+ copy\\(", l)],
        "grad_dots": [l for l in lines if "f32[32,48]" in l and " dot(" in l],
    }

print(json.dumps({"Dense": compiled(keras.layers.Dense), "TokenDense": compiled(TokenDense)}))
"""


def test_weight_gradient_needs_no_transposed_copy_on_jax():
    """Regression: for a 3-D Dense, JAX's XLA:CPU emits the kernel gradient
    as `dot(x, copy(g^T))`, a transposed copy plus an Eigen dot outside its
    YNNPACK fusions (the sliding layer 1.15x and `slide_13` 1.27x slower
    than on TF). TokenDense's gradient is the plain `x^T @ g` with no copy.
    Compiled by JAX in a subprocess, so it runs under either test backend."""
    pytest.importorskip("jax")
    from trainers import testing

    found = testing.run_json_script(_JAX_WEIGHT_GRADIENT)
    assert found["Dense"]["copies"]  # the defect, still in Keras' Dense
    assert found["TokenDense"]["copies"] == []
    (grad,) = found["TokenDense"]["grad_dots"]
    assert "lhs_contracting_dims={0}, rhs_contracting_dims={0}" in grad
