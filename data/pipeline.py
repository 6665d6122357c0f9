"""Long-document batching: each batch slot reads one document, segment after segment.

``long_document_dataset`` returns a ``tf.data.Dataset`` of dicts::

    token_ids          int32 [B, L]  ids, the last segment of a document zero-padded
    start_of_sequence  bool  [B]     True on the first segment of a document (reset the state)
    epoch              int32 [B]     which pass over the split the slot is in
    num_bytes          int32 [B]     UTF-8 bytes of text the segment covers (bits-per-byte)
    nonzero_tokens     int32 [B]     non-padding tokens in the segment

How documents reach slots (see data/README.md):

* All documents of the split are held in memory (our corpora are 6-41 MB; for catalog data sets use
  a TFDS slice such as ``"train[:10%]"``). Empty documents are skipped and counted
  (``DocumentStore.num_empty``); invalid UTF-8 is replaced by U+FFFD.
* Epoch ``e`` orders the documents by the stateless permutation
  ``tf.random.experimental.index_shuffle(position, seed=[seed, e])``: a document-level shuffle,
  the same on every host for a seed, new every epoch.
* Shard ``s`` of ``S`` takes the positions ``p`` with ``p % S == s`` (disjoint shards), and its slot
  ``b`` of ``B`` takes the shard's positions ``b, b + B, b + 2B, ...`` (a static round-robin:
  a slot never moves to another shard, so per-replica state always belongs to its own slot).
  The reference hands a finished slot the next free document instead; the static assignment
  makes the position a pure function of a few counters, so the iterator is checkpointable.
* With ``repeat=True`` each slot loops over epochs forever and ``epoch`` counts its passes; with
  ``repeat=False`` a slot that has run out yields all-padding segments (``nonzero_tokens == 0``,
  ``start_of_sequence == False``) until every slot of the shard has run out.

Resuming: the returned dataset uses only checkpointable tf.data ops and stores no document text in
its state, so ``tf.train.Checkpoint(data=iterator)`` saves the exact position (a few KB) and
restoring it continues with the very next segment of every slot.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from data.tokenizers import get_tokenizer

LOCAL_CORPORA = ("books", "papers", "code")
CATALOG_TEXT_FEATURES = {"pg19": "book_text", "scientific_papers/arxiv": "article"}


class DatasetNotPreparedError(FileNotFoundError):
    """The TFDS data set is not in ``data_dir``; the message names the command that builds it."""


@dataclasses.dataclass
class DocumentStore:
    name: str
    split: str
    texts: list  # bytes, valid UTF-8, non-empty
    num_empty: int  # skipped empty documents
    num_replaced: int  # documents in which invalid UTF-8 was replaced


def _build_hint(name: str, data_dir) -> str:
    data_dir = data_dir or "~/tensorflow_datasets"
    if name in LOCAL_CORPORA:
        return (
            f"python -m data.fetch_corpora --out RAW_DIR --corpus {name} && "
            f"python -m data.build --corpus {name} --raw_dir RAW_DIR --data_dir {data_dir}"
        )
    return (
        f"tfds build {name} --data_dir {data_dir} (a catalog data set), or for your own "
        f"documents: python -m data.build --corpus text --raw_dir DIR_OR_JSONL --name {name} "
        f"--data_dir {data_dir}"
    )


def clean_texts(raw_texts) -> tuple[list, int, int]:
    """Drops empty documents and replaces invalid UTF-8; returns (texts, num_empty, num_replaced)."""
    texts, empty, replaced = [], 0, 0
    for t in raw_texts:
        if isinstance(t, str):
            t = t.encode("utf-8", errors="replace")
        t = bytes(t)
        if not t:
            empty += 1
            continue
        try:
            t.decode("utf-8")
        except UnicodeDecodeError:
            t = t.decode("utf-8", errors="replace").encode("utf-8")
            replaced += 1
        texts.append(t)
    return texts, empty, replaced


def _has_text_feature(name: str, data_dir) -> bool:
    """True when ``name`` has a ``text`` feature (e.g. data.build --corpus text); a name that
    is neither registered nor prepared in ``data_dir`` raises DatasetNotPreparedError."""
    import tensorflow_datasets as tfds

    try:
        features = tfds.builder(name, data_dir=data_dir).info.features
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetNotPreparedError(
            f"data set {name!r} is not prepared in {data_dir}. "
            f"Build it with: {_build_hint(name, data_dir)}"
        ) from e
    except Exception:  # noqa: BLE001 - unreadable info: ask for text_feature below
        return False
    return features is not None and "text" in features


def load_documents(
    name: str, split: str, data_dir=None, text_feature=None
) -> DocumentStore:
    """Reads every document of a TFDS split (ours or a catalog data set) into memory."""
    import tensorflow_datasets as tfds

    import data.builders  # noqa: F401  (registers books / papers / code)

    feature = text_feature or ("text" if name in LOCAL_CORPORA else None)
    feature = feature or CATALOG_TEXT_FEATURES.get(name)
    if feature is None and _has_text_feature(name, data_dir):
        feature = "text"  # a corpus of your own documents (data.build --corpus text)
    if feature is None:
        raise ValueError(
            f"pass text_feature=... for {name!r} (the feature holding the text)"
        )
    try:
        ds = tfds.load(
            name, split=split, data_dir=data_dir, download=False, shuffle_files=False
        )
    except (
        AssertionError,
        FileNotFoundError,
        tfds.core.registered.DatasetNotFoundError,
    ) as e:
        raise DatasetNotPreparedError(
            f"data set {name!r} (split {split!r}) is not prepared in {data_dir}. "
            f"Build it with: {_build_hint(name, data_dir)}\n({type(e).__name__}: {e})"
        ) from e
    ds = ds.map(lambda ex: ex[feature])
    texts, empty, replaced = clean_texts(ds.as_numpy_iterator())
    return DocumentStore(name, split, texts, empty, replaced)


def document_index(position, num_documents, seed=0, epoch=0):
    """Index in the split of the document read at ``position`` of epoch ``epoch``'s order
    (the stateless document shuffle every slot follows)."""
    seeds = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.index_shuffle(
        tf.cast(position, tf.int64), seeds, num_documents - 1
    )


def _slot_dataset(
    texts_t, n, tok, L, seed, shard_index, num_shards, slot, batch_size, repeat
):
    stride = num_shards * batch_size
    first = shard_index + num_shards * slot
    seed = tf.constant(seed, tf.int64)

    def doc_segments(epoch, position):
        index = document_index(position, n, seed, epoch)
        ids = tf.cast(tok.tokenize(texts_t[index]), tf.int32)
        length = tf.shape(ids)[0]
        num = (length + L - 1) // L
        segs = tf.reshape(tf.pad(ids, [[0, num * L - length]]), [num, L])
        return tf.data.Dataset.from_tensor_slices(
            {
                "token_ids": segs,
                "start_of_sequence": tf.range(num) == 0,
                "epoch": tf.fill([num], tf.cast(epoch, tf.int32)),
                "num_bytes": tf.cast(tok.num_bytes(segs), tf.int32),
                "nonzero_tokens": tf.reduce_sum(tf.cast(segs != 0, tf.int32), axis=1),
            }
        )

    epochs = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(1)
    positions = epochs.flat_map(
        lambda e: tf.data.Dataset.range(first, n, stride).map(lambda p: (e, p))
    )
    return positions.flat_map(doc_segments)


def long_document_dataset(
    name,
    split,
    *,
    segment_length: int,
    batch_size: int,
    tokenizer="bytes",
    data_dir=None,
    seed: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    repeat: bool = True,
    text_feature: str | None = None,
    documents=None,
) -> tf.data.Dataset:
    """Batches of consecutive segments of long documents; see the module docstring.

    ``name``: ``"books"``, ``"papers"``, ``"code"`` or a catalog TFDS name (``"pg19"``,
    ``"scientific_papers/arxiv"``, or any other with ``text_feature``). ``tokenizer``: ``"bytes"``,
    a SentencePiece ``.model`` path or a tokenizer object. ``documents``: a list of texts to use
    instead of loading ``name`` (tests, custom corpora). The returned dataset carries the loaded
    :class:`DocumentStore` as ``dataset.document_store`` when that attribute can be set.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    if segment_length <= 0 or batch_size <= 0:
        raise ValueError("segment_length and batch_size must be positive")
    tok = get_tokenizer(tokenizer)
    if documents is None:
        store = load_documents(name, split, data_dir, text_feature)
    else:
        texts, empty, replaced = clean_texts(documents)
        store = DocumentStore(name or "documents", split, texts, empty, replaced)
    n = len(store.texts)
    if shard_index + num_shards * (batch_size - 1) >= n:
        raise ValueError(
            f"{name}/{split} has {n} non-empty documents ({store.num_empty} empty skipped): too few "
            f"for {num_shards} shard(s) x {batch_size} slots; every slot needs a document"
        )
    texts_t = tf.constant(np.array(store.texts, dtype=object))
    slots = [
        _slot_dataset(
            texts_t,
            n,
            tok,
            segment_length,
            seed,
            shard_index,
            num_shards,
            b,
            batch_size,
            repeat,
        )
        for b in range(batch_size)
    ]
    if not repeat:
        pad = {
            "token_ids": tf.zeros([segment_length], tf.int32),
            "start_of_sequence": tf.constant(False),
            "epoch": tf.constant(0, tf.int32),
            "num_bytes": tf.constant(0, tf.int32),
            "nonzero_tokens": tf.constant(0, tf.int32),
        }
        padding = tf.data.Dataset.from_tensors((pad, False)).repeat()
        slots = [s.map(lambda x: (x, True)).concatenate(padding) for s in slots]
    ds = tf.data.Dataset.zip(tuple(slots))
    if not repeat:
        ds = ds.take_while(
            lambda *xs: tf.reduce_any(tf.stack([valid for _, valid in xs]))
        )
        ds = ds.map(lambda *xs: tuple(x for x, _ in xs))
    ds = ds.map(
        lambda *xs: {k: tf.stack([x[k] for x in xs]) for k in xs[0]},
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.prefetch(2)
    try:
        ds.document_store = store
    except AttributeError:
        pass
    return ds
