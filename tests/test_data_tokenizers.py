"""Tokenizer round trips on real text; SentencePiece trained offline on fixture books."""

import os

import numpy as np
import pytest
import tensorflow as tf

import data
from data.train_tokenizer import train_sentencepiece

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")


def _texts():
    out = []
    for sub in ("books", "papers"):
        for name in sorted(os.listdir(os.path.join(FIXTURES, sub))):
            with open(os.path.join(FIXTURES, sub, name), "rb") as f:
                out.append(f.read())
    return out


TEXTS = _texts()


def test_byte_tokenizer_round_trip_and_ids():
    tok = data.ByteTokenizer()
    assert tok.vocabulary_size == 260
    for text in TEXTS + ["na\u00efve \u2014 \u2713".encode()]:
        ids = tok.tokenize(text)
        assert ids.dtype == tf.int32 and int(tf.reduce_min(ids)) >= 4
        np.testing.assert_array_equal(ids.numpy(), np.frombuffer(text, np.uint8) + 4)
        assert tok.detokenize(ids).numpy() == text
    ragged = tok.tokenize(tf.constant(TEXTS[:2]))
    assert list(tok.detokenize(ragged).numpy()) == TEXTS[:2]
    padded = tf.constant([[ord("h") + 4, ord("i") + 4, 0, 0]])
    assert tok.detokenize(padded).numpy().tolist() == [b"hi"]
    ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(tok.tokenize)
    assert [len(x) for x in ds.as_numpy_iterator()] == [len(t) for t in TEXTS]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    proto = train_sentencepiece(TEXTS[:4], vocab_size=600)
    path = tmp_path_factory.mktemp("spm") / "fixture.model"
    path.write_bytes(proto)
    return str(path)


def test_sentencepiece_round_trip_in_tf_data(sp_model):
    tok = data.SentencePieceTokenizer(sp_model)
    assert 300 < tok.vocabulary_size <= 600
    ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(tok.tokenize)
    for text, ids in zip(TEXTS, ds.as_numpy_iterator()):
        assert ids.min() > 0  # 0 is padding only
        assert len(ids) < 0.7 * len(text)  # fewer ids than bytes
        assert (
            tok.detokenize(ids).numpy() == text
        )  # identity normalisation + byte fallback
    # a zero-padded row detokenizes to its text
    ids = tok.tokenize(TEXTS[0][:200]).numpy()
    padded = np.pad(ids, (0, 7))[None]
    assert tok.detokenize(padded).numpy()[0] == TEXTS[0][:200]


def test_pipeline_with_sentencepiece(sp_model):
    ds = data.long_document_dataset(
        "fixtures", "train", documents=TEXTS, segment_length=128, batch_size=2,
        tokenizer=sp_model, repeat=False,
    )  # fmt: skip
    tok = data.get_tokenizer(sp_model)
    slots = {0: [], 1: []}
    for batch in ds.as_numpy_iterator():
        for b in range(2):
            if batch["start_of_sequence"][b]:
                slots[b].append([])
            if batch["nonzero_tokens"][b]:
                slots[b][-1].append(batch["token_ids"][b][: batch["nonzero_tokens"][b]])
    rebuilt = [
        tok.detokenize(np.concatenate(d)).numpy() for s in slots.values() for d in s
    ]
    assert sorted(rebuilt) == sorted(TEXTS)


def test_bad_model_file(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception):  # noqa: B017  (tensorflow-text raises its own error types)
        data.SentencePieceTokenizer(str(bad)).tokenize("x")
