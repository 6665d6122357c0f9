"""The model in the box (issue 13): `brt_keras/presets/brt_books_mini` loads
by name without network, is trained (real text scores far below an untrained
model) and generates text."""

import math

import keras
import numpy as np
import pytest

from brt_keras import BlockRecurrentCausalLM

# Public domain (Austen, Pride and Prejudice, ch. 1): text of the training
# corpus' kind, so a trained byte model must score it well.
AUSTEN = (
    "It is a truth universally acknowledged, that a single man in possession of a "
    "good fortune, must be in want of a wife. However little known the feelings or "
    "views of such a man may be on his first entering a neighbourhood, this truth "
    "is so well fixed in the minds of the surrounding families, that he is "
    "considered the rightful property of some one or other of their daughters."
)


@pytest.fixture(scope="module")
def shipped():
    return BlockRecurrentCausalLM.from_preset("brt_books_mini")


def bits_per_byte(lm, text):
    ids = np.asarray(keras.ops.convert_to_numpy(lm.preprocessor.tokenizer(text)))
    logits = np.asarray(keras.ops.convert_to_numpy(lm(ids[None])))[0, :-1]
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    return float(nll.mean() / math.log(2))


@pytest.mark.model
def test_shipped_preset_is_listed_and_trained(shipped):
    from brt_keras.models import block_recurrent_causal_lm

    assert "brt_books_mini" in block_recurrent_causal_lm.shipped_presets()
    untrained = BlockRecurrentCausalLM.from_config(shipped.get_config())
    untrained.preprocessor = shipped.preprocessor
    trained_bits = bits_per_byte(shipped, AUSTEN)
    # Model card: 2.09 bits/byte on the test split; uniform over 260 ids is 8.02.
    assert trained_bits < 3.0, trained_bits
    assert bits_per_byte(untrained, AUSTEN) > 7.0


@pytest.mark.model
def test_shipped_preset_generates_text(shipped):
    shipped.compile(sampler="greedy")
    out = shipped.generate("It is a truth", max_length=80)
    assert isinstance(out, str) and out.startswith("It is a truth")
    continuation = out[len("It is a truth") :]
    assert len(continuation) > 20
    # Mostly letters and spaces: English-like bytes, not noise.
    letters = sum(c.isalpha() or c.isspace() for c in continuation)
    assert letters / len(continuation) > 0.8, out
    batch = shipped.generate(["It is a truth", "And God said"], max_length=40)
    assert [b[: len(p)] for b, p in zip(batch, ["It is a truth", "And God said"])] == [
        "It is a truth",
        "And God said",
    ]
