"""Nucleus (top-p) sampling."""

from keras import ops

from brt_keras.samplers.sampler import Sampler


class TopPSampler(Sampler):
    """Samples from the smallest set of tokens whose probability reaches `p`.

    Args:
        p: float in (0, 1].
        temperature, seed: see `Sampler`.
    """

    def __init__(self, p=0.9, temperature=1.0, seed=None):
        super().__init__(temperature, seed)
        if not 0 < p <= 1:
            raise ValueError(f"p must be in (0, 1]; got {p}.")
        self.p = p

    def sample(self, logits):
        order = ops.argsort(-logits, axis=-1)
        sorted_logits = ops.take_along_axis(logits, order, axis=-1)
        probs = ops.softmax(sorted_logits, axis=-1)
        # Keep a token if the mass strictly before it is below p.
        before = ops.cumsum(probs, axis=-1) - probs
        sorted_logits = ops.where(before < self.p, sorted_logits, -1e9)
        choice = self.draw(sorted_logits)
        return ops.take_along_axis(order, choice[:, None], axis=-1)[:, 0]

    def get_config(self):
        return dict(super().get_config(), p=self.p)
