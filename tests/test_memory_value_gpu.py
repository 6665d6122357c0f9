"""The TensorFlow-free path of benchmarks/memory_value_gpu.py (the device
machine's code comparison): its numpy batcher must feed the model exactly
what the trainers' tf.data pipeline feeds it, and its evaluation must score
every test token once."""

import numpy as np
import pytest

from benchmarks import memory_value_gpu as mvg

TEXTS = [
    "def f(x):\n    return x + 1\n" * 3,
    "short",
    "import os\nprint(os.getcwd())\n" * 2,
    "class A:\n    pass\n",
    "x" * 45,
]


def _docs():
    return [np.frombuffer(t.encode(), np.uint8).astype(np.int32) + 4 for t in TEXTS]


@pytest.mark.parametrize("repeat", [True, False])
def test_numpy_batches_equal_the_trainers_pipeline(repeat):
    import data
    from data.pipeline import document_index

    L, B, seed, n = 16, 2, 3, len(TEXTS)
    ds = data.long_document_dataset(
        "documents",
        "train",
        segment_length=L,
        batch_size=B,
        seed=seed,
        repeat=repeat,
        documents=TEXTS,
    )

    def order(epoch):
        return np.array(
            [int(document_index(p, n, seed, epoch)) for p in range(n)], np.int64
        )

    ours = (
        list(
            b
            for b, _, _ in mvg.long_document_batches(
                _docs(), L, B, order, repeat=repeat
            )
        )
        if not repeat
        else mvg.long_document_batches(_docs(), L, B, order, repeat=True)
    )
    theirs_all = ds.as_numpy_iterator()
    if not repeat:  # both streams end together
        theirs_all = list(theirs_all)
        assert len(ours) == len(theirs_all) >= 5
    else:
        ours = (b for b, _, _ in ours)
    count = 0
    for theirs, batch in zip(theirs_all, ours):
        np.testing.assert_array_equal(batch["token_ids"], theirs["token_ids"])
        np.testing.assert_array_equal(
            batch["start_of_sequence"].astype(bool), theirs["start_of_sequence"]
        )
        count += 1
        if count == 40:
            break
    assert count >= 5


def test_evaluation_scores_every_test_token_once_and_reset_changes_later_segments():
    lm = mvg.build("rec_fixed_skip", "tiny", seed=0)
    L = lm.segment_length
    docs = _docs()
    carried = mvg.evaluate(lm, docs, 2, "never", max_tokens=10**9)
    reset = mvg.evaluate(lm, docs, 2, "every_segment", max_tokens=10**9)
    # Each segment scores its tokens but the last (whose target lies in the next).
    expected = sum(min(L, len(d) - s) - 1 for d in docs for s in range(0, len(d), L))
    assert carried["tokens"] == reset["tokens"] == expected
    assert carried["complete"] and np.isfinite(carried["bits_per_token"])
    # Only documents longer than one segment can feel the reset.
    one_segment = [i for i, d in enumerate(docs) if len(d) <= L]
    per = {
        k: dict(zip(r["per_document"]["index"], r["per_document"]["nll_bits"]))
        for k, r in (("c", carried), ("r", reset))
    }
    for i in one_segment:
        assert per["c"][i] == pytest.approx(per["r"][i], rel=1e-5)
    assert any(
        abs(per["c"][i] - per["r"][i]) > 1e-4
        for i in range(len(docs))
        if i not in one_segment
    )
