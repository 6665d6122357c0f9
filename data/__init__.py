"""Data pipelines for brt_keras: offline corpora, TFDS builders, tokenizers, long-document batching.

See data/README.md. Public API::

    data.long_document_dataset(name, split, *, segment_length, batch_size, tokenizer, data_dir, ...)
    data.load_documents(name, split, data_dir=None, text_feature=None) -> DocumentStore
    data.ByteTokenizer(), data.SentencePieceTokenizer(model), data.get_tokenizer(spec)
"""

from data.pipeline import CATALOG_TEXT_FEATURES
from data.pipeline import LOCAL_CORPORA
from data.pipeline import DatasetNotPreparedError
from data.pipeline import DocumentStore
from data.pipeline import load_documents
from data.pipeline import long_document_dataset
from data.tokenizers import ByteTokenizer
from data.tokenizers import SentencePieceTokenizer
from data.tokenizers import get_tokenizer

__all__ = [
    "CATALOG_TEXT_FEATURES",
    "LOCAL_CORPORA",
    "ByteTokenizer",
    "DatasetNotPreparedError",
    "DocumentStore",
    "SentencePieceTokenizer",
    "get_tokenizer",
    "load_documents",
    "long_document_dataset",
]
