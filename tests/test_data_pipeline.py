"""Long-document batching on real text (fixtures in tests/fixtures/data, byte vocabulary)."""

import os

import numpy as np
import pytest
import tensorflow as tf

import data

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")


def _fixture_texts():
    texts = []
    for sub in ("books", "papers"):
        for name in sorted(os.listdir(os.path.join(FIXTURES, sub))):
            with open(os.path.join(FIXTURES, sub, name), "rb") as f:
                texts.append(f.read())
    # Real text, cut to several lengths so documents end at every phase of a segment, and some
    # shorter than one segment.
    texts += [t[:n] for t in texts[:3] for n in (1, 700, 2999, 3000, 3001)]
    return texts


TEXTS = _fixture_texts()


def _batches(**kw):
    kw.setdefault("segment_length", 1000)
    kw.setdefault("batch_size", 3)
    ds = data.long_document_dataset("fixtures", "train", documents=TEXTS, **kw)
    return list(ds.as_numpy_iterator()) if not kw.get("repeat", True) else ds


def _documents_per_slot(batches):
    """Rebuilds each slot's documents from its segments; checks flags and padding on the way."""
    B, L = batches[0]["token_ids"].shape
    tok = data.ByteTokenizer()
    docs = {b: [] for b in range(B)}
    for step, batch in enumerate(batches):
        for b in range(B):
            ids = batch["token_ids"][b]
            nz = int(batch["nonzero_tokens"][b])
            if nz == 0:  # a finished slot (repeat=False): all padding, no reset
                assert not batch["start_of_sequence"][b] and not ids.any()
                continue
            if step == 0:
                assert batch["start_of_sequence"][b]
            if batch["start_of_sequence"][b]:
                docs[b].append([])
            else:  # a continuation: the previous segment of this slot must have been full
                assert docs[b] and len(docs[b][-1][-1]) == L
            # Padding only at the tail of the segment: the first nz ids are real, the rest 0.
            assert (ids[:nz] > 0).all() and not ids[nz:].any()
            assert batch["num_bytes"][b] == nz
            docs[b][-1].append(ids[:nz])
    return {
        b: [tok.detokenize(np.concatenate(segs)).numpy() for segs in slot]
        for b, slot in docs.items()
    }


def test_slots_reproduce_documents_exactly():
    batches = _batches(repeat=False)
    per_slot = _documents_per_slot(batches)
    rebuilt = [d for slot in per_slot.values() for d in slot]
    assert sorted(rebuilt) == sorted(TEXTS)  # every document once, byte for byte


def test_dtypes_and_shapes():
    batch = next(iter(_batches()))
    assert batch["token_ids"].dtype == tf.int32 and batch["token_ids"].shape == (
        3,
        1000,
    )
    assert batch["start_of_sequence"].dtype == tf.bool
    for key in ("epoch", "num_bytes", "nonzero_tokens"):
        assert batch[key].dtype == tf.int32 and batch[key].shape == (3,)


def test_repeat_counts_epochs_and_keeps_continuity():
    ds = _batches(repeat=True, segment_length=4000, batch_size=2)
    batches = list(ds.take(120).as_numpy_iterator())
    epochs = np.stack([b["epoch"] for b in batches])
    assert epochs.max() >= 1 and (np.diff(epochs, axis=0) >= 0).all()
    # an epoch changes only where a document starts
    changed = np.diff(epochs, axis=0) > 0
    starts = np.stack([b["start_of_sequence"] for b in batches])[1:]
    assert (starts[changed]).all()
    _documents_per_slot(batches)  # flags/padding invariants hold across epochs


def test_deterministic_per_seed():
    def first(seed):
        ds = _batches(seed=seed)
        return np.stack([b["token_ids"] for b in ds.take(30).as_numpy_iterator()])

    a, b, c = first(0), first(0), first(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_shards_disjoint_and_complete():
    per_shard = []
    for s in range(2):
        batches = _batches(repeat=False, shard_index=s, num_shards=2, batch_size=2)
        docs = [d for slot in _documents_per_slot(batches).values() for d in slot]
        per_shard.append(docs)
    assert not set(per_shard[0]) & set(per_shard[1])
    assert sorted(per_shard[0] + per_shard[1]) == sorted(TEXTS)


def test_save_restore_continues_with_next_batch(tmp_path):
    it = iter(_batches(batch_size=4, segment_length=512))
    for _ in range(7):
        next(it)
    ckpt = tf.train.Checkpoint(data=it)
    path = ckpt.write(str(tmp_path / "ckpt"))
    expected = [next(it)["token_ids"].numpy() for _ in range(5)]
    for _ in range(3):
        next(it)
    # a brand-new pipeline restored from the checkpoint continues at the same place
    it2 = iter(_batches(batch_size=4, segment_length=512))
    tf.train.Checkpoint(data=it2).read(path).assert_consumed()
    got = [next(it2)["token_ids"].numpy() for _ in range(5)]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)
    size = sum(f.stat().st_size for f in tmp_path.iterdir())
    assert size < 200_000  # the position, not the documents


def test_empty_skipped_invalid_utf8_replaced():
    docs = [b"", "caf\u00e9 ok".encode(), b"bad \xff\xfe byte", b"", b"x" * 10]
    ds = data.long_document_dataset(
        "t", "train", documents=docs, segment_length=8, batch_size=2, repeat=False
    )
    store = ds.document_store
    assert store.num_empty == 2 and store.num_replaced == 1
    rebuilt = sorted(
        d for s in _documents_per_slot(list(ds.as_numpy_iterator())).values() for d in s
    )
    assert rebuilt == sorted(
        [b"x" * 10, "caf\u00e9 ok".encode(), "bad \ufffd\ufffd byte".encode()]
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="too few"):
        data.long_document_dataset("t", "train", documents=[b"a", b"b"], segment_length=4,
                                   batch_size=3)  # fmt: skip
    with pytest.raises(ValueError, match="shard_index"):
        data.long_document_dataset("t", "train", documents=TEXTS, segment_length=4, batch_size=1,
                                   shard_index=2, num_shards=2)  # fmt: skip
    with pytest.raises(ValueError, match="text_feature"):
        data.load_documents("mnist", "train")
