"""Top-k sampling."""

from keras import ops

from brt_keras.samplers.sampler import Sampler


class TopKSampler(Sampler):
    """Samples among the `k` most likely tokens.

    Args:
        k: int, tokens kept.
        temperature, seed: see `Sampler`.
    """

    def __init__(self, k=5, temperature=1.0, seed=None):
        super().__init__(temperature, seed)
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}.")
        self.k = k

    def sample(self, logits):
        kth = ops.top_k(logits, min(self.k, logits.shape[-1]))[0][:, -1:]
        return self.draw(ops.where(logits >= kth, logits, -1e9))

    def get_config(self):
        return dict(super().get_config(), k=self.k)
