"""A SentencePiece vocabulary as a keras-hub tokenizer for our models."""

import keras
import keras_hub

from brt_keras.models.block_recurrent_backbone import BlockRecurrentBackbone


@keras.saving.register_keras_serializable(package="brt_keras")
class BlockRecurrentSentencePieceTokenizer(keras_hub.tokenizers.SentencePieceTokenizer):
    """keras-hub's SentencePiece tokenizer with the specials our data pipeline
    uses: `<pad>` (id 0), `</s>` and, when the vocabulary has it, `<s>`.

    Models trained by `python -m data.train_tokenizer` (pad 0, unk 1, bos 2,
    eos 3) and T5's vocabulary (pad 0, eos 1, no bos) both load. The ids are
    those of `data.tokenizers.SentencePieceTokenizer` for the same model file.

    Args:
        proto: path to a `.model` file or its serialized bytes.

    Example:
    >>> tokenizer = BlockRecurrentSentencePieceTokenizer("books.model")
    >>> tokenizer.detokenize(tokenizer("It is a truth"))
    'It is a truth'
    """

    backbone_cls = BlockRecurrentBackbone

    def __init__(self, proto=None, **kwargs):
        self._add_special_token("<pad>", "pad_token")
        self._add_special_token("</s>", "end_token")
        super().__init__(proto=proto, **kwargs)

    def set_proto(self, proto):
        super().set_proto(proto)
        # `<s>` is optional (T5 has none): without it no start token exists.
        vocabulary = self.get_vocabulary() if proto is not None else []
        self.start_token = "<s>" if "<s>" in vocabulary else None
        self.start_token_id = (
            self.token_to_id("<s>") if self.start_token is not None else None
        )
        attrs = [a for a in self._special_token_attrs if a != "start_token"]
        self._special_token_attrs = attrs + (
            ["start_token"] if self.start_token else []
        )
        if proto is not None and self.pad_token_id != 0:
            raise ValueError(
                f"The SentencePiece model has `<pad>` at id {self.pad_token_id}; "
                "BlockRecurrentCausalLM treats id 0 as padding. Train the "
                "vocabulary with `python -m data.train_tokenizer` (pad_id=0)."
            )
