"""A Dense layer over the last axis computed as one `[tokens, features]` product."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="brt_keras")
class TokenDense(keras.layers.Dense):
    """`keras.layers.Dense` that flattens all leading axes before its matmul.

    Same weights, config and outputs as `Dense`; only the shape of the
    product differs: `[B, L, d] @ [d, f]` runs as `[B*L, d] @ [d, f]`. Its
    weight gradient is then one product contracting a single token axis.
    Why: for the 3-D product, JAX's XLA:CPU contracts the batch and token
    axes of both operands and emits the weight gradient as a transposed copy
    of the output gradient plus an Eigen dot, outside its YNNPACK fusions;
    flattened, it is the plain `x^T @ g` form both backends run fast
    (`SlidingWindowLayer` forward + backward on JAX 1.30-1.50 s -> 1.17-1.26
    s, TF unchanged: benchmarks/README.md, jax_vs_tf). A quantized layer
    (`quantize("int8")`) runs Keras' own quantized call unchanged.

    Args:
        Those of `keras.layers.Dense`.

    Example:
    >>> layer = TokenDense(4, use_bias=False)
    >>> layer(keras.ops.ones((2, 3, 5))).shape
    (2, 3, 4)
    """

    def call(self, inputs, training=None):
        if len(inputs.shape) <= 2:
            return super().call(inputs, training=training)
        leading = ops.shape(inputs)[:-1]
        tokens = ops.reshape(inputs, (-1, inputs.shape[-1]))
        outputs = super().call(tokens, training=training)
        return ops.reshape(outputs, (*leading, self.units))

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras refuses subclasses of Dense (their `call` may differ); this
        # one changes only the float path, and a quantized layer runs
        # Dense's own `quantized_call`.
        super().quantize(mode, type_check=False, config=config)
