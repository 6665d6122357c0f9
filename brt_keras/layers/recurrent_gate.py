"""Fixed and LSTM gates that combine a carried value with an update."""

import keras
from keras import ops

from brt_keras.layers.not_quantized import NotQuantized
from brt_keras.layers.sliding_window_layer import dense_initializer
from brt_keras.layers.token_dense import TokenDense

GATE_TYPES = ("fixed", "lstm")


@keras.saving.register_keras_serializable(package="brt_keras")
class RecurrentGate(NotQuantized, keras.layers.Layer):
    """Gate `c' = f * c + i * z` of the recurrent state update.

    - `"fixed"` (the reference's `"bias"`): `g = sigmoid(b)`, `b ~ N(0, 0.1)`,
      `c' = g * c + (1 - g) * z`; no input dependence.
    - `"lstm"`: `f = sigmoid(W_f h + b_f + 1)`, `i = sigmoid(W_i h + b_i - 1)`,
      `c' = f * c + i * z`. The +1/-1 are constants added on every call, not
      initial values. Kernels use variance_scaling(0.1), biases N(0, 0.1).

    `h` is the hidden activation that produced `z` (the [self ; cross] concat
    for the attention projection, the ReLU hidden layer for an FFN); gates
    never look at `c`.

    `Model.quantize` leaves the fixed gate's bias in float32 (`NotQuantized`:
    it sets how much of the state survives each block); an LSTM gate's
    `Dense` sublayers are quantized like every other projection.

    Args:
        gate_type: `"fixed"` or `"lstm"`.
        units: int, width of `c` and `z`.

    Example:
    >>> gate = RecurrentGate("lstm", 32)
    >>> c, z, h = (keras.random.normal((2, 4, n)) for n in (32, 32, 64))
    >>> gate(c, z, h).shape
    (2, 4, 32)
    """

    def __init__(self, gate_type, units, **kwargs):
        super().__init__(**kwargs)
        if gate_type not in GATE_TYPES:
            raise ValueError(
                f"Unknown gate_type {gate_type!r}; use one of {GATE_TYPES}."
            )
        self.gate_type = gate_type
        self.units = units
        bias_init = keras.initializers.RandomNormal(stddev=0.1)
        if gate_type == "fixed":
            self.gate_bias = self.add_weight(
                name="gate_bias", shape=(units,), initializer=bias_init
            )
        else:

            def dense(name):
                return TokenDense(
                    units,
                    kernel_initializer=dense_initializer(0.1),
                    bias_initializer=bias_init,
                    dtype=self.dtype_policy,
                    name=name,
                )

            self.input_gate = dense("input_gate")
            self.forget_gate = dense("forget_gate")

    def build(self, c_shape, z_shape=None, h_shape=None):
        if self.gate_type == "lstm":
            self.input_gate.build(h_shape)
            self.forget_gate.build(h_shape)
        self.built = True

    def call(self, c, z, h):
        if self.gate_type == "fixed":
            g = ops.sigmoid(ops.cast(self.gate_bias, c.dtype))
            return c * g + z * (1.0 - g)
        f = ops.sigmoid(self.forget_gate(h) + 1.0)
        i = ops.sigmoid(self.input_gate(h) - 1.0)
        return c * f + z * i

    def get_config(self):
        config = super().get_config()
        config.update(gate_type=self.gate_type, units=self.units)
        return config
