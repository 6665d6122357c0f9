"""The associative-recall task of benchmarks/long_range_recall.py (issue 10):
disjoint vocabularies, queries beyond the sliding stack's reach, and the
no-binding ceiling it is judged against."""

import numpy as np
import pytest

from benchmarks import long_range_recall as recall


@pytest.mark.parametrize(
    "w, layers, pairs, marker",
    [(8, 2, 4, False), (16, 3, 8, False), (16, 3, 5, True), (8, 4, 4, False)],
)
def test_batches_bind_keys_to_values_beyond_the_window(w, layers, pairs, marker):
    keys, values, filler = 16, 16, 32
    pair_blocks, query_block, blocks = recall.layout(w, layers, pairs)
    # At least two filler blocks, and every query beyond layers x W.
    assert query_block - pair_blocks >= 2
    assert recall.min_distance(w, pairs, query_block) > layers * w
    rng = np.random.default_rng(0)
    x, y = recall.make_batch(
        rng, 5, w, pairs, keys, values, filler, query_block, blocks, marker
    )
    assert x.shape == y.shape == (5, blocks * w)
    value0, filler0 = recall.KEY0 + keys, recall.KEY0 + keys + values
    pos = recall.query_positions(w, pairs, query_block, marker)
    scored = np.argwhere(y > 0)
    assert len(scored) == 5 * pairs
    assert set(scored[:, 1]) == set(pos.tolist())
    for b in range(5):
        k, v = x[b, 0 : 2 * pairs : 2], x[b, 1 : 2 * pairs : 2]
        # Disjoint vocabularies; keys distinct within a document.
        assert ((k >= recall.KEY0) & (k < value0)).all()
        assert ((v >= value0) & (v < filler0)).all()
        assert len(set(k.tolist())) == pairs
        rest = np.delete(x[b], np.r_[0 : 2 * pairs, pos, pos + 1, pos - 1])
        assert (rest >= filler0).all() or marker
        # Each query asks a key of the pairs; its target is that key's value,
        # which is also the next input token (teacher forcing).
        for p in pos:
            j = np.where(k == x[b, p])[0]
            assert len(j) == 1 and y[b, p] == v[j[0]] == x[b, p + 1]
            if marker:
                assert x[b, p - 1] == 1
        # The keys are asked in a shuffled order, each exactly once.
        assert sorted(x[b, pos].tolist()) == sorted(k.tolist())


def test_layout_grows_the_gap_with_depth():
    # 2 layers x W 8: queries in block 3 (pairs in 0, filler 1-2) suffice;
    # 4 layers need the queries further away.
    assert recall.layout(8, 2, 4) == (1, 3, 4)
    _, q4, _ = recall.layout(8, 4, 4)
    assert q4 > 3 and recall.min_distance(8, 4, q4) > 32


def test_bad_task_sizes_are_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="keys"):
        recall.make_batch(rng, 1, 8, 5, 4, 16, 8, 3, 4)
    with pytest.raises(ValueError, match="fit in one block"):
        recall.make_batch(rng, 1, 8, 5, 16, 16, 8, 3, 4)


def test_no_binding_ceiling_formula():
    # Distinct values: the best bag guesser scores 1/P, 1/(P-1), ..., 1.
    got = recall.no_binding_accuracy(4, 10**9, samples=4000)
    np.testing.assert_allclose(got, [1 / 4, 1 / 3, 1 / 2, 1], atol=0.03)
    # Two pairs, 16 values: first query 1/16 + 15/16 * 1/2, second always.
    got = recall.no_binding_accuracy(2, 16, samples=20000)
    np.testing.assert_allclose(got, [1 / 16 + 15 / 32, 1.0], atol=0.01)
    assert recall.no_binding_accuracy(1, 16, samples=100).tolist() == [1.0]


def test_curriculum_ends_at_the_target():
    # Layout: pairs in block 0, final queries in block 4.
    assert recall.parse_curriculum("1,2,4,8", 8, 4) == [(1, 4), (2, 4), (4, 4), (8, 4)]
    assert recall.parse_curriculum("4@0,8@0", 8, 4) == [(4, 1), (8, 1), (8, 4)]
    assert recall.parse_curriculum("", 8, 4) == [(8, 4)]
    with pytest.raises(ValueError, match="curriculum stage"):
        recall.parse_curriculum("16", 8, 4)
    with pytest.raises(ValueError, match="curriculum stage"):
        recall.parse_curriculum("2@9", 8, 4)


@pytest.mark.parametrize("recurrent_layer", [0, 1])
def test_diagnostics_with_the_recurrent_layer_anywhere(recurrent_layer):
    # The lever ablation puts the recurrent layer at the bottom (index 0);
    # the diagnostics once assumed layer 0 was a sliding layer and crashed.
    args = recall.parser().parse_args(
        ["--num-layers", "3", "--window", "8", "--num-states", "4"]
    )
    args.recurrent_layer = recurrent_layer
    lm = recall.build("rec_fixed_skip", args)
    assert lm.backbone.recurrent_indices[0] == recurrent_layer
    pair_blocks, query_block, blocks = recall.layout(8, 3, args.pairs)
    x, _ = recall.make_batch(
        np.random.default_rng(0), 2, 8, args.pairs, 16, 16, 32, query_block, blocks
    )
    pos = recall.query_positions(8, args.pairs, query_block)
    d = recall.attention_diagnostics(lm, x, pair_blocks, pos)
    assert 0 < d["write_entropy"] <= d["write_entropy_uniform"] + 1e-5
    assert "token_self_lowest_sliding" in d["temperatures"]
