"""Token samplers for `BlockRecurrentCausalLM.generate`."""

from brt_keras.samplers.greedy_sampler import GreedySampler
from brt_keras.samplers.sampler import Sampler
from brt_keras.samplers.top_k_sampler import TopKSampler
from brt_keras.samplers.top_p_sampler import TopPSampler

_BY_NAME = {"greedy": GreedySampler, "top_k": TopKSampler, "top_p": TopPSampler}


def get(sampler, seed=None):
    """A sampler from a name ("greedy", "top_k", "top_p") or an instance."""
    if isinstance(sampler, Sampler):
        return sampler
    if sampler not in _BY_NAME:
        raise ValueError(
            f"Unknown sampler {sampler!r}; use one of {sorted(_BY_NAME)} or a "
            "brt_keras.samplers.Sampler instance."
        )
    return _BY_NAME[sampler](seed=seed)


__all__ = ["GreedySampler", "Sampler", "TopKSampler", "TopPSampler", "get"]
