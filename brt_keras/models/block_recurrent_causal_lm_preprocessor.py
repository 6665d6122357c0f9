"""Strings to padded token ids (and back) for `BlockRecurrentCausalLM`."""

import os

import keras
import keras_hub

from brt_keras.models.block_recurrent_backbone import BlockRecurrentBackbone
from brt_keras.models.block_recurrent_sentence_piece_tokenizer import (
    BlockRecurrentSentencePieceTokenizer,
)
from brt_keras.models.block_recurrent_tokenizer import BlockRecurrentTokenizer


@keras.saving.register_keras_serializable(package="brt_keras")
class BlockRecurrentCausalLMPreprocessor(keras_hub.models.CausalLMPreprocessor):
    """keras-hub's causal LM preprocessing with our tokenizer.

    Called on strings it returns `(x, y, sample_weight)` for `fit`:
    `x = {"token_ids": [B, sequence_length], "padding_mask": ...}`, right
    padded with id 0, `y` the ids shifted left. `generate_preprocess` /
    `generate_postprocess` serve `BlockRecurrentCausalLM.generate`.

    Our training data carries no start or end tokens (documents are
    separated by `start_of_sequence` resets), so neither is added by
    default; a model fine-tuned with them can turn them on.

    Args:
        tokenizer: a `BlockRecurrentTokenizer` or
            `BlockRecurrentSentencePieceTokenizer`.
        sequence_length: int, padded length for `fit`.
        add_start_token, add_end_token: bool, default False.

    Example:
    >>> preprocessor = BlockRecurrentCausalLMPreprocessor(
    ...     BlockRecurrentTokenizer(), sequence_length=8)
    >>> preprocessor.generate_preprocess(["Hi", "abc"], sequence_length=4)
    {'token_ids': array([[ 76, 109, 0, 0], [101, 102, 103, 0]]), ...}
    """

    backbone_cls = BlockRecurrentBackbone
    tokenizer_cls = BlockRecurrentTokenizer

    def __init__(
        self,
        tokenizer,
        sequence_length=1024,
        add_start_token=False,
        add_end_token=False,
        **kwargs,
    ):
        super().__init__(
            tokenizer=tokenizer,
            sequence_length=sequence_length,
            add_start_token=add_start_token,
            add_end_token=add_end_token,
            **kwargs,
        )

    def build(self, input_shape):
        # keras-hub's `generate_preprocess` packs with the start value
        # whatever `add_start_token` says; without one it cannot add it.
        self.packer = keras_hub.layers.StartEndPacker(
            start_value=self.tokenizer.start_token_id if self.add_start_token else None,
            end_value=self.tokenizer.end_token_id,
            pad_value=self.tokenizer.pad_token_id,
            sequence_length=self.sequence_length,
            return_padding_mask=True,
        )
        self.built = True

    @classmethod
    def for_tokenizer(cls, tokenizer="bytes", sequence_length=1024):
        """The preprocessor for a tokenizer spec as the trainers name it:
        "bytes" (or None) or a SentencePiece `.model` path."""
        if tokenizer in (None, "bytes"):
            return cls(BlockRecurrentTokenizer(), sequence_length=sequence_length)
        if not os.path.isfile(tokenizer):
            raise ValueError(
                f"tokenizer {tokenizer!r} is neither 'bytes' nor a SentencePiece "
                ".model file."
            )
        with open(tokenizer, "rb") as f:
            proto = f.read()
        return cls(
            BlockRecurrentSentencePieceTokenizer(proto=proto),
            sequence_length=sequence_length,
        )
