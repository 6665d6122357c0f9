"""Mixin for layers that stay in float when a model is quantized."""


class NotQuantized:
    """Marks a layer as kept in float by `Model.quantize` on purpose.

    `keras.Model.quantize(mode)` calls `quantize` on every leaf layer and
    warns for each one that does not implement it. Layers whose weights are
    tiny, or whose precision matters more than their size (relative position
    bias tables, recurrent gates, norm scales), or that have no weights at
    all (dropout) use this mixin: their `quantize` is a documented no-op, so
    `lm.quantize("int8")` quantizes the dense projections and the embedding
    and leaves these as they are, silently.

    Put it first among the bases: `class Gate(NotQuantized, keras.layers.Layer)`.
    """

    def quantize(self, mode=None, type_check=True, config=None):
        """Does nothing: this layer keeps its float weights under every
        quantization mode (Keras validates `mode` before calling this)."""
        del mode, type_check, config
