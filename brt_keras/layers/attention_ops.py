"""Attention arithmetic shared by every BRT layer (keras.ops only).

The reference (meliad `attention.simple_attention`) L2-normalises queries and
keys, adds the relative bias, multiplies by a learned per-head temperature,
masks with -1e6 and uses a "safe" softmax whose denominator holds one extra
phantom entry of logit -1000, so a fully masked row attends to nothing.
"""

from keras import ops

MASK_VALUE = -1e6
SAFE_SOFTMAX_MIN = -1000.0


def l2_normalize(x, epsilon=1e-6):
    """`x * rsqrt(sum(x**2) + eps)` over the last (head) axis."""
    return x * ops.rsqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + epsilon)


def safe_softmax(logits, axis=-1, min_x=SAFE_SOFTMAX_MIN):
    """Softmax with a phantom entry of value `min_x` in the denominator."""
    m = ops.maximum(ops.max(logits, axis=axis, keepdims=True), min_x)
    y = ops.exp(logits - m)
    return y / (ops.sum(y, axis=axis, keepdims=True) + ops.exp(min_x - m))


def attend(
    queries,
    keys,
    values,
    temperature,
    bias=None,
    mask=None,
    dropout=None,
    training=None,
):
    """Normalised dot-product attention over any leading axes.

    Args:
        queries: `[..., Q, H, Dh]`, already L2-normalised.
        keys: `[..., K, H, Dh]`, already L2-normalised.
        values: `[..., K, H, Dh]`.
        temperature: `[H]` learned logit scale, applied after the bias.
        bias: optional `[H, Q, K]` added before the temperature.
        mask: optional boolean `[Q, K]` (or broadcastable to `[..., H, Q, K]`),
            True where a key may be attended.
        dropout: optional Dropout layer applied to the probabilities.

    Returns:
        `[..., Q, H, Dh]` in the dtype of `values`.
    """
    logits = ops.einsum("...qhd,...khd->...hqk", queries, keys)
    logits = ops.cast(logits, "float32")
    if bias is not None:
        logits = logits + ops.cast(bias, "float32")
    logits = logits * ops.reshape(ops.cast(temperature, "float32"), (-1, 1, 1))
    if mask is not None:
        logits = ops.where(mask, logits, MASK_VALUE)
    probs = ops.cast(safe_softmax(logits), values.dtype)
    if dropout is not None:
        probs = dropout(probs, training=training)
    return ops.einsum("...hqk,...khd->...qhd", probs, values)


def merge_heads(x):
    """`[..., T, H, Dh]` -> `[..., T, H * Dh]`, head-major columns."""
    shape = ops.shape(x)
    return ops.reshape(x, tuple(shape[:-2]) + (shape[-2] * shape[-1],))
