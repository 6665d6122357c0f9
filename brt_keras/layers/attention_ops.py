"""Attention arithmetic shared by every BRT layer (keras.ops only).

The reference (meliad `attention.simple_attention`) L2-normalises queries and
keys, adds the relative bias, multiplies by a learned per-head temperature,
masks with -1e6 and uses a "safe" softmax whose denominator holds one extra
phantom entry of logit -1000, so a fully masked row attends to nothing.
"""

import math

from keras import ops

MASK_VALUE = -1e6
HALVING_MAX_TILE = 2**20
SAFE_SOFTMAX_MIN = -1000.0


def l2_normalize(x, epsilon=1e-6):
    """`x * rsqrt(sum(x**2) + eps)` over the last (head) axis."""
    return x * ops.rsqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + epsilon)


def safe_softmax_parts(logits):
    """`(exp(logits - m), denominator)` of the reference's safe softmax over
    the last axis: the denominator holds a phantom logit of -1000, so a fully
    masked row attends to nothing. Divide the attended output by it."""
    # The max only keeps exp() in range; the result does not depend on it.
    m = ops.stop_gradient(
        ops.maximum(ops.max(logits, axis=-1, keepdims=True), SAFE_SOFTMAX_MIN)
    )
    weights = ops.exp(logits - m)
    denominator = ops.sum(weights, axis=-1, keepdims=True) + ops.exp(
        SAFE_SOFTMAX_MIN - m
    )
    return weights, denominator


def sum_leading_axes(x, count):
    """Sums the first `count` axes of `x` by adding halves.

    Same sum as `ops.sum(x, axis=range(count))` (the order of additions
    differs). A reduction over leading (major) axes compiles on XLA:CPU to
    a loop that strides through the whole tensor for each output element;
    adding halves is elementwise, vectorises, and reads each element once
    (`benchmarks/attention_chunks.py`: the attention core's backward pass
    ~1.6x faster at W = 512 with 128-query chunks). An axis of unknown
    (symbolic) size falls back to `ops.sum`.
    """
    for _ in range(count):
        n = x.shape[0]
        if n is None:
            x = ops.sum(x, axis=0)
            continue
        while n > 1:
            half = n // 2
            top = x[:half] + x[half : 2 * half]
            if n % 2:
                top = ops.concatenate([top, x[2 * half :]], axis=0)
            x, n = top, half + n % 2
        x = x[0]
    return x


@ops.custom_gradient
def add_tile(logits, tile):
    """`logits + tile` for `logits` `[..., H, Q, K]` and `tile` `[H, Q, K]`;
    the tile's gradient (the sum of the logits' gradient over the leading
    axes) is computed by `sum_leading_axes`."""

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        leading = len(upstream.shape) - len(tile.shape)
        if None in tile.shape or math.prod(tile.shape) > HALVING_MAX_TILE:
            return upstream, ops.sum(upstream, axis=tuple(range(leading)))
        return upstream, sum_leading_axes(upstream, leading)

    return logits + tile, grad


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

    Computes `softmax(where(mask, (q.k + bias) * temperature, -1e6)) @ v`
    with the reference's safe softmax (a phantom logit of -1000 in the
    denominator, so a fully masked row attends to nothing), rearranged for
    speed (same values to float round-off): the temperature is folded into
    the queries and the bias and mask into one additive `[H, Q, K]` tile (a masked logit becomes
    `logit - 1e6` instead of `-1e6`; both give an exact zero after the
    softmax); the einsums run head-major (`[..., H, Q, K]`, which XLA on
    CPU differentiates ~2x faster than the token-major form); and the
    softmax denominator divides the `[Q, Dh]` output instead of the `[Q, K]`
    probabilities (dropout is elementwise, so the order does not matter).

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
    temperature = ops.cast(temperature, "float32")
    scale = ops.cast(ops.reshape(temperature, (-1, 1, 1)), queries.dtype)
    q = ops.swapaxes(queries, -2, -3) * scale  # [..., H, Q, Dh]
    k = ops.swapaxes(keys, -2, -3)
    v = ops.swapaxes(values, -2, -3)
    logits = ops.cast(ops.einsum("...hqd,...hkd->...hqk", q, k), "float32")
    tile = None
    if bias is not None:
        tile = ops.cast(bias, "float32") * ops.reshape(temperature, (-1, 1, 1))
    if mask is not None:
        tile = ops.where(mask, 0.0 if tile is None else tile, MASK_VALUE)
    if tile is not None:
        logits = add_tile(logits, ops.broadcast_to(tile, ops.shape(logits)[-3:]))
    weights, denominator = safe_softmax_parts(logits)
    weights = ops.cast(weights, values.dtype)
    if dropout is not None:
        weights = dropout(weights, training=training)
    out = ops.einsum("...hqk,...hkd->...hqd", weights, v)
    out = out / ops.cast(denominator, out.dtype)
    return ops.swapaxes(out, -2, -3)


def attend_cached(query, cached, temperature, tile):
    """One query per slot against cached keys/values, as `attend` computes
    it, without joining the cache.

    Decoding reads every cached key and value once per token, so for
    batched decoding the cache, not the weights, is the cost; concatenating
    the previous block with the current one (or moving heads forward) would
    copy it on every step. Here each cached part is dotted where it lies
    (head-major: batch and head axes lead, as XLA's batched dot wants) and
    only the small `[B, H, 1, K]` logits are joined. The arithmetic is done
    in float32, the cache's dtype.

    Args:
        query: `[B, 1, H, Dh]`, already L2-normalised.
        cached: list of `(keys, values)`, each `[B, H, K_i, Dh]` float32.
        temperature: `[H]`.
        tile: additive float32 `[H, 1, sum K_i]`: `bias * temperature` where
            a key may be attended, `-1e6` where not (as `attend` builds it);
            None for no bias and no mask (cross-attention to the state).

    Returns:
        `[B, 1, H, Dh]` in the query's dtype.
    """
    temperature = ops.cast(temperature, "float32")
    q = ops.swapaxes(ops.cast(query, "float32"), 1, 2)  # [B, H, 1, Dh]
    q = q * ops.reshape(temperature, (-1, 1, 1))
    logits = ops.concatenate(
        [ops.einsum("bhqd,bhkd->bhqk", q, k) for k, _ in cached], axis=-1
    )
    weights, denominator = safe_softmax_parts(logits if tile is None else logits + tile)
    out, start = None, 0
    for _, v in cached:
        size = ops.shape(v)[2]
        part = ops.einsum("bhqk,bhkd->bhqd", weights[..., start : start + size], v)
        out = part if out is None else out + part
        start += size
    out = out / denominator
    return ops.cast(ops.swapaxes(out, 1, 2), query.dtype)


def merge_heads(x):
    """`[..., T, H, Dh]` -> `[..., T, H * Dh]`, head-major columns."""
    shape = ops.shape(x)
    return ops.reshape(x, tuple(shape[:-2]) + (shape[-2] * shape[-1],))


TEMPERATURE_PARAMETERIZATIONS = ("linear", "log")


def check_temperature_options(init, parameterization, lr_multiplier):
    """Raises a ValueError naming the fix for invalid temperature options."""
    if parameterization not in TEMPERATURE_PARAMETERIZATIONS:
        raise ValueError(
            f"Unknown temperature_parameterization {parameterization!r}; use "
            f"one of {TEMPERATURE_PARAMETERIZATIONS}."
        )
    if parameterization == "log" and init <= 0:
        raise ValueError(
            f"temperature_init must be > 0 with the log parameterization; got {init}."
        )
    if lr_multiplier <= 0:
        raise ValueError(f"temperature_lr_multiplier must be > 0; got {lr_multiplier}.")


def add_temperature(
    layer, name, num_heads, init, parameterization, lr_multiplier, dtype=None
):
    """Adds a learned per-head temperature variable to `layer`.

    The defaults (init 1, "linear", multiplier 1) are the reference's: the
    variable is the temperature itself, initialised to ones. Otherwise the
    variable `w` stores `tau / m` ("linear") or `log(tau) / m` ("log"), and
    `temperature_value` returns `m * w` or `exp(m * w)`. Scaling a
    variable's value by `m` makes a sign-based or Adam-like update move the
    temperature (or its log) `m` times faster: a learning-rate multiplier
    that needs no optimizer support.
    """
    import math

    import keras

    raw = init if parameterization == "linear" else math.log(init)
    raw = raw / lr_multiplier
    initializer = "ones" if raw == 1.0 else keras.initializers.Constant(raw)
    return layer.add_weight(
        name=name, shape=(num_heads,), initializer=initializer, dtype=dtype
    )


def temperature_value(variable, parameterization="linear", lr_multiplier=1.0):
    """The temperature a `add_temperature` variable stands for."""
    if parameterization == "linear" and lr_multiplier == 1.0:
        return variable
    t = ops.cast(variable, "float32") * lr_multiplier
    return ops.exp(t) if parameterization == "log" else t
