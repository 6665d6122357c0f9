"""Base class: a sampler maps next-token logits `[B, V]` to ids `[B]`."""

import keras
from keras import ops


class Sampler:
    """Picks the next token from logits.

    Subclasses implement `sample(probabilities_or_logits)`; `__call__` applies
    the temperature. Samplers run eagerly between compiled decoding steps,
    so their random draws never enter a traced loop.

    Args:
        temperature: float, logits are divided by it.
        seed: int or None, for reproducible draws.
    """

    def __init__(self, temperature=1.0, seed=None):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}.")
        self.temperature = temperature
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def __call__(self, logits):
        logits = ops.cast(logits, "float32") / self.temperature
        return ops.cast(self.sample(logits), "int32")

    def sample(self, logits):
        raise NotImplementedError

    def draw(self, logits):
        """One categorical draw per row of (masked) logits."""
        return keras.random.categorical(logits, 1, seed=self.seed_generator)[:, 0]

    def get_config(self):
        return {"temperature": self.temperature, "seed": self.seed}
