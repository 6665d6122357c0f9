"""Samplers for `BlockRecurrentCausalLM.generate`: keras-hub's.

keras-hub's samplers (`keras_hub.samplers`) serve generation; this module
only maps the names `generate(ids, sampler=..., seed=...)` has always taken
to them, and rejects the two that need more than our constant-cost decoder
gives (beam search reorders the cache along the batch, contrastive search
reads the hidden state of every step).
"""

import inspect

import keras_hub
from keras_hub.samplers import GreedySampler
from keras_hub.samplers import RandomSampler
from keras_hub.samplers import Sampler
from keras_hub.samplers import TopKSampler
from keras_hub.samplers import TopPSampler

_BY_NAME = {
    "greedy": GreedySampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
}
UNSUPPORTED = (keras_hub.samplers.BeamSampler, keras_hub.samplers.ContrastiveSampler)


def get(sampler, seed=None):
    """A keras-hub sampler from a name ("greedy", "random", "top_k",
    "top_p"; `seed` seeds the random ones) or an instance."""
    if isinstance(sampler, UNSUPPORTED) or (
        isinstance(sampler, str) and sampler not in _BY_NAME
    ):
        name = sampler if isinstance(sampler, str) else type(sampler).__name__
        raise ValueError(
            f"Unknown sampler {name!r} for BlockRecurrentCausalLM; use one of "
            f"{sorted(_BY_NAME)} or a keras_hub.samplers.Sampler instance "
            "(beam and contrastive search are not supported: they need the "
            "cache reordered along the batch or every step's hidden state)."
        )
    if isinstance(sampler, Sampler):
        return sampler
    if not isinstance(sampler, str):
        raise ValueError(
            f"sampler must be a name or a keras_hub.samplers.Sampler; got {sampler!r}."
        )
    cls = _BY_NAME[sampler]
    if "seed" in inspect.signature(cls).parameters:
        return cls(seed=seed)
    return cls()


__all__ = [
    "GreedySampler",
    "RandomSampler",
    "Sampler",
    "TopKSampler",
    "TopPSampler",
    "get",
]
