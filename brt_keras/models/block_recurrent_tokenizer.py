"""The byte vocabulary of our data pipeline as a keras-hub tokenizer."""

import keras
import keras_hub
import numpy as np

from brt_keras.models.block_recurrent_backbone import BlockRecurrentBackbone

# Ids 0-3 are the specials of `data.tokenizers.ByteTokenizer`; byte b is b + 4.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
OFFSET = len(SPECIAL_TOKENS)


def _shift(tokens, offset):
    """Adds `offset` to python lists (nested), arrays and tensors alike."""
    if isinstance(tokens, (list, tuple)):
        return [_shift(t, offset) for t in tokens]
    return tokens + offset


@keras.saving.register_keras_serializable(package="brt_keras")
class BlockRecurrentTokenizer(keras_hub.tokenizers.ByteTokenizer):
    """UTF-8 bytes shifted by 4: id 0 = `<pad>`, 1 = `<s>`, 2 = `</s>`,
    3 = `<unk>`, byte b = b + 4; 260 ids.

    The ids are exactly those of `data.tokenizers.ByteTokenizer`, which every
    byte-level model of this repository was trained on. Unlike keras-hub's
    `ByteTokenizer` the text is not lowercased by default and padding is left
    to the preprocessor (id 0).

    Args:
        lowercase: bool, case-fold the text first (default False).
        normalization_form: None or a unicode normalization form.
        errors: "replace", "ignore" or "strict": invalid UTF-8 on
            detokenization.

    Example:
    >>> tokenizer = BlockRecurrentTokenizer()
    >>> tokenizer("Hi")
    array([76, 109], dtype=int32)
    >>> tokenizer.detokenize([76, 109, 2])
    'Hi'
    """

    backbone_cls = BlockRecurrentBackbone

    def __init__(self, lowercase=False, sequence_length=None, **kwargs):
        if sequence_length is not None:
            raise ValueError(
                "BlockRecurrentTokenizer does not pad; got sequence_length="
                f"{sequence_length}. Pad with `BlockRecurrentCausalLMPreprocessor"
                "(tokenizer, sequence_length=...)`, which pads with id 0."
            )
        self._add_special_token("<pad>", "pad_token")
        self._add_special_token("<s>", "start_token")
        self._add_special_token("</s>", "end_token")
        super().__init__(lowercase=lowercase, **kwargs)

    def vocabulary_size(self):
        return 256 + OFFSET

    def get_vocabulary(self):
        return list(SPECIAL_TOKENS) + [chr(i) for i in range(256)]

    def id_to_token(self, id):
        if not 0 <= id < self.vocabulary_size():
            raise ValueError(
                f"`id` must be in range [0, {self.vocabulary_size() - 1}]. "
                f"Received: {id}"
            )
        return self.get_vocabulary()[id]

    def token_to_id(self, token):
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        if len(token) != 1 or ord(token) >= 256:
            raise ValueError(
                f"Token {token!r} is not a special token or a single byte "
                "(a character below U+0100)."
            )
        return ord(token) + OFFSET

    def tokenize(self, inputs):
        return _shift(super().tokenize(inputs), OFFSET)

    def _maybe_initialized_tf(self):
        # The parent's id -> byte table, with the specials joining as "".
        if self._char_lst is None:
            self._char_lst = np.array(
                [b""] * OFFSET + [bytes([i]) for i in range(256)], dtype=object
            )

    def _detokenize_python(self, inputs):
        if not isinstance(inputs, (list, tuple)):
            inputs = np.asarray(keras.ops.convert_to_numpy(inputs)).tolist()
        batched = bool(inputs) and isinstance(inputs[0], (list, tuple))
        rows = inputs if batched else [inputs]
        errors = self.errors
        texts = [
            bytes(int(i) - OFFSET for i in row if int(i) >= OFFSET).decode(
                "utf-8", errors=errors
            )
            for row in rows
        ]
        return texts if batched else texts[0]

    def save_assets(self, dir_path):
        pass  # The vocabulary is fixed: nothing to write.

    def load_preset_assets(self, preset):
        pass  # ... and nothing to read.
