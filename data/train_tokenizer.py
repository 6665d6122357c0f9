"""Train a SentencePiece model offline on the train split of a corpus.

    python -m data.train_tokenizer --corpus books --data_dir DATA_DIR --vocab_size 8000 \
        --out books.model [--model_type unigram|bpe] [--max_sentences 2000000]

Ids: pad=0, unk=1, bos=2, eos=3 (id 0 is padding, as for the byte vocabulary). The vocabulary is
capped softly (``hard_vocab_limit=False``) so small corpora still train. Only the train split is
read, so validation and test stay unseen.
"""

from __future__ import annotations

import argparse
import io
import sys


def _sentences(texts, max_sentences: int, max_sentence_bytes: int = 4096):
    count = 0
    for text in texts:
        for line in text.decode("utf-8").split("\n"):
            line = line.strip()
            if not line:
                continue
            yield line[:max_sentence_bytes]
            count += 1
            if count >= max_sentences:
                return


def train_sentencepiece(
    texts, vocab_size: int, model_type: str = "unigram", max_sentences: int = 2_000_000
) -> bytes:
    """Trains on an iterable of UTF-8 documents (bytes); returns the serialised model proto."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sentences(texts, max_sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        hard_vocab_limit=False,
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        num_threads=2,
        minloglevel=2,
    )
    return model.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--corpus", required=True, help="books|papers|code or a catalog name"
    )
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--out", required=True, help="path of the .model file to write")
    parser.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    parser.add_argument("--split", default="train")
    parser.add_argument("--text_feature", default=None)
    parser.add_argument("--max_sentences", type=int, default=2_000_000)
    args = parser.parse_args(argv)

    from data.pipeline import load_documents

    store = load_documents(args.corpus, args.split, args.data_dir, args.text_feature)
    proto = train_sentencepiece(
        store.texts, args.vocab_size, args.model_type, args.max_sentences
    )
    with open(args.out, "wb") as f:
        f.write(proto)
    print(f"wrote {args.out} ({len(proto)} bytes) from {len(store.texts)} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
