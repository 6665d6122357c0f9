"""Tokenizers usable inside ``tf.data``: a byte vocabulary and SentencePiece (tensorflow-text).

Both expose ``tokenize(text) -> int32 ids`` (a TF graph op: a scalar string gives a 1-D tensor, a
1-D string tensor a RaggedTensor), ``detokenize(ids) -> string``, ``vocabulary_size`` and
``num_bytes(ids)`` (how many UTF-8 bytes of text the ids stand for; used for bits-per-byte).
Id 0 is padding in both.
"""

from __future__ import annotations

import os

import tensorflow as tf

PAD_ID = 0


class ByteTokenizer:
    """UTF-8 bytes shifted by 4: id = byte + 4, so 0 = pad and 1..3 are free for specials.

    ``vocabulary_size`` is 260, as in the reference's byte-level runs. The round trip
    ``detokenize(tokenize(s)) == s`` is exact for any byte string.
    """

    OFFSET = 4
    PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

    @property
    def vocabulary_size(self) -> int:
        return 256 + self.OFFSET

    def tokenize(self, text):
        text = tf.convert_to_tensor(text, tf.string)
        if text.shape.rank == 0:
            return tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32) + self.OFFSET
        chars = tf.strings.bytes_split(text)  # ragged [N, (bytes)] of 1-byte strings
        return tf.ragged.map_flat_values(
            lambda c: (
                tf.cast(tf.io.decode_raw(c, tf.uint8)[:, 0], tf.int32) + self.OFFSET
            ),
            chars,
        )

    def detokenize(self, ids):
        """Drops ids below the byte offset (padding, specials) and joins the bytes."""
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
        ids = tf.cast(ids, tf.int32)
        if isinstance(ids, tf.Tensor) and ids.shape.rank == 1:
            keep = tf.boolean_mask(ids, ids >= self.OFFSET) - self.OFFSET
            return tf.strings.reduce_join(tf.gather(_BYTE_TABLE, keep))
        if isinstance(ids, tf.Tensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        keep = tf.ragged.boolean_mask(ids, ids >= self.OFFSET) - self.OFFSET
        return tf.strings.reduce_join(
            tf.ragged.map_flat_values(lambda v: tf.gather(_BYTE_TABLE, v), keep),
            axis=-1,
        )

    def num_bytes(self, ids):
        return tf.reduce_sum(
            tf.cast(tf.cast(ids, tf.int32) >= self.OFFSET, tf.int32), axis=-1
        )


_BYTE_TABLE = [bytes([i]) for i in range(256)]


class SentencePieceTokenizer:
    """A SentencePiece model applied with ``tensorflow_text.SentencepieceTokenizer``.

    ``model`` is a path to a ``.model`` file (ours, or any user model such as T5's) or the
    serialised proto bytes. Models trained by ``python -m data.train_tokenizer`` use pad_id=0,
    unk_id=1, bos_id=2, eos_id=3; for a user model whose pad id is not 0 the ids are used as is and
    only id 0 is treated as padding by the pipeline.
    """

    def __init__(self, model):
        import tensorflow_text as tf_text

        if isinstance(model, (str, os.PathLike)):
            with tf.io.gfile.GFile(os.fspath(model), "rb") as f:
                model = f.read()
        self.model_proto = model
        self._tok = tf_text.SentencepieceTokenizer(
            model=model, out_type=tf.int32, add_bos=False, add_eos=False
        )

    @property
    def vocabulary_size(self) -> int:
        return int(self._tok.vocab_size())

    def tokenize(self, text):
        return self._tok.tokenize(text)

    def detokenize(self, ids):
        ids = tf.convert_to_tensor(ids) if not isinstance(ids, tf.RaggedTensor) else ids
        if isinstance(ids, tf.Tensor):
            # Drop padding (id 0) so a zero-padded segment detokenizes to its text only.
            if ids.shape.rank == 1:
                ids = tf.boolean_mask(ids, ids != PAD_ID)
            else:
                ids = tf.ragged.boolean_mask(ids, ids != PAD_ID)
        return self._tok.detokenize(ids)

    def num_bytes(self, ids):
        return tf.strings.length(self.detokenize(ids))


def get_tokenizer(spec) -> ByteTokenizer | SentencePieceTokenizer:
    """``"bytes"`` -> ByteTokenizer; a path to a .model file -> SentencePieceTokenizer;
    a tokenizer object is returned as is."""
    if spec is None or spec == "bytes":
        return ByteTokenizer()
    if isinstance(spec, (str, os.PathLike)):
        return SentencePieceTokenizer(spec)
    return spec
