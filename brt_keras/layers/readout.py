"""Logits from a (possibly quantized) tied embedding table."""

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
