"""Logits from a (possibly quantized) tied embedding table, and the training
loss from the unquantized table without materialising the logits."""

import numpy as np
from keras import ops


def tied_readout(embedding, hidden):
    """`hidden @ E^T` for a `keras.layers.Embedding` E, as float32 logits.

    After `Model.quantize("int8")` the layer's `embeddings` are the int8
    table `round(E * scale)` with one `scale` per row (token), so the
    product is divided by `embeddings_scale` per logit; reading the raw int8
    table as if it were E would give wrong logits.

    Args:
        embedding: a built `keras.layers.Embedding` `[V, d]`.
        hidden: `[..., d]` activations.

    Returns:
        float32 `[..., V]`.
    """
    table = ops.cast(embedding.embeddings, hidden.dtype)
    logits = ops.cast(ops.matmul(hidden, ops.transpose(table)), "float32")
    mode = embedding.quantization_mode
    if mode is None:
        return logits
    scale = ops.cast(embedding.embeddings_scale, "float32")
    if mode not in ("int8", "int4") or len(scale.shape) != 1:
        raise NotImplementedError(
            f"A tied readout from a {mode!r}-quantized embedding is not "
            'supported; quantize with "int8" (or skip the embedding with '
            "`filters`)."
        )
    return logits / scale


def check_loss_chunk_tokens(loss_chunk_tokens):
    """Validates `loss_chunk_tokens`: None (the reference: full logits) or a
    positive int."""
    if loss_chunk_tokens is None:
        return None
    if isinstance(loss_chunk_tokens, bool) or not isinstance(
        loss_chunk_tokens, (int, np.integer)
    ):
        raise ValueError(
            f"loss_chunk_tokens={loss_chunk_tokens!r}: give None (full logits) "
            "or a positive number of positions, e.g. 512."
        )
    if loss_chunk_tokens <= 0:
        raise ValueError(
            f"loss_chunk_tokens={loss_chunk_tokens} must be positive (e.g. 512), "
            "or None for the full logits."
        )
    return int(loss_chunk_tokens)


def tied_readout_loss(embedding, hidden, targets, weights, divisor, chunk_tokens):
    """`sum(weights * NLL(targets))` under `tied_readout(E, hidden) / divisor`,
    `chunk_tokens` positions at a time, with its gradient.

    The `[N, V]` logits of a whole step never exist: one loop over chunks of
    positions computes each chunk's logits, its log-sum-exp, its share of the
    loss and, since the loss is a sum, its gradients (`d hidden` for the chunk,
    `d E` accumulated); the backward pass only scales them by the incoming
    gradient. Same arithmetic as `sparse_categorical_crossentropy` on the full
    logits (same three matrix products), up to float rounding; memory for the
    logits drops from a few `[N, V]` float32 buffers to a few `[chunk, V]`.
    Targets and weights are constants (no gradient).

    Args:
        embedding: a built, unquantized `keras.layers.Embedding` `[V, d]`.
        hidden: `[..., d]` activations.
        targets: int `[...]` ids in `[0, V)`.
        weights: `[...]` per-position loss weights.
        divisor: float, the logits' divisor (the model's `sqrt(V)`).
        chunk_tokens: int, positions per chunk (the last one zero-padded).

    Returns:
        float32 scalar.

    Example:
    >>> lm = BlockRecurrentCausalLM.from_preset("rec_fixed_skip", size="tiny")
    >>> h = lm.backbone(ids)
    >>> tied_readout_loss(lm.backbone.token_embedding, h, targets,
    ...     ops.ones(targets.shape), math.sqrt(260), 32)
    """
    if embedding.quantization_mode is not None:
        raise ValueError(
            "loss_chunk_tokens needs a float embedding table; this one is "
            f"{embedding.quantization_mode!r}-quantized. Train in float and "
            "quantize afterwards, or set loss_chunk_tokens=None."
        )
    dim = hidden.shape[-1]
    vocab = embedding.input_dim
    hidden = ops.reshape(hidden, (-1, dim))
    targets = ops.reshape(ops.cast(targets, "int32"), (-1,))
    weights = ops.reshape(ops.cast(weights, "float32"), (-1,))
    # Padded positions get weight 0: they add nothing to the loss or gradient.
    pad = (-ops.shape(hidden)[0]) % chunk_tokens
    hidden = ops.pad(hidden, ((0, pad), (0, 0)))
    targets = ops.pad(targets, ((0, pad),))
    weights = ops.pad(weights, ((0, pad),))
    chunks = (
        ops.reshape(hidden, (-1, chunk_tokens, dim)),
        ops.reshape(targets, (-1, chunk_tokens)),
        ops.reshape(weights, (-1, chunk_tokens)),
    )
    # A tensor read of the variable (TF's convert_to_tensor hands back the
    # variable, which tf.custom_gradient would treat as a captured variable).
    table = ops.copy(embedding.embeddings)

    @ops.custom_gradient
    def loss_and_grads(h, table, t, w):
        table_h = ops.cast(table, h.dtype)

        def chunk(i, carry):
            total, d_table, d_h = carry
            h_c = ops.slice(h, (i, 0, 0), (1, chunk_tokens, dim))[0]
            t_c = ops.slice(t, (i, 0), (1, chunk_tokens))[0]
            w_c = ops.slice(w, (i, 0), (1, chunk_tokens))[0]
            logits = ops.matmul(h_c, ops.transpose(table_h))
            logits = ops.cast(logits, "float32") / divisor
            lse = ops.logsumexp(logits, axis=-1)
            one_hot = ops.one_hot(t_c, vocab, dtype="float32")
            nll = lse - ops.sum(logits * one_hot, axis=-1)
            total = total + ops.sum(w_c * nll)
            # d loss / d logits = (softmax - one_hot) * w, then through "/ divisor".
            d_logits = (ops.exp(logits - lse[:, None]) - one_hot) * (
                w_c[:, None] / divisor
            )
            d_h_c = ops.matmul(ops.cast(d_logits, h.dtype), table_h)
            d_h = ops.slice_update(d_h, (i, 0, 0), d_h_c[None])
            d_table = d_table + ops.matmul(
                ops.transpose(d_logits), ops.cast(h_c, "float32")
            )
            return total, d_table, d_h

        init = (
            ops.zeros((), "float32"),
            ops.zeros(ops.shape(table), "float32"),
            ops.zeros_like(h),
        )
        # A loop, not a Python unroll: each chunk's [chunk, V] buffers are
        # dead before the next chunk starts.
        total, d_table, d_h = ops.fori_loop(0, ops.shape(h)[0], chunk, init)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, "float32")
            return (
                ops.cast(ops.cast(d_h, "float32") * upstream, h.dtype),
                ops.cast(d_table * upstream, table.dtype),
                ops.zeros_like(t),
                ops.zeros_like(w),
            )

        return total, grad

    return loss_and_grads(chunks[0], table, chunks[1], chunks[2])
