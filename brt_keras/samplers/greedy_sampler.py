"""Greedy decoding."""

from keras import ops

from brt_keras.samplers.sampler import Sampler


class GreedySampler(Sampler):
    """Always the most likely token.

    Example:
    >>> GreedySampler()(np.array([[0.1, 2.0, -1.0]]))  # -> [1]
    """

    def sample(self, logits):
        return ops.argmax(logits, axis=-1)
