"""trainers.evaluate's memory ablation (--reset_state), --by_position and bootstrap intervals."""

import functools
import json
import os

import keras
import numpy as np
import pytest
from conftest import tiny_lm

from trainers import scoring
from trainers import testing


def _texts():
    text = open(os.path.join(testing.FIXTURES, "hamlet_act1.txt"), "rb").read()
    # Three documents for two slots: slot 0 reads two in turn (its state must reset between).
    return [text[:150], text[1000:1090], text[2000:2040]]


@functools.cache
def _scores(reset_state):
    """Scores of the three documents on the tiny rec model (shared by the tests)."""
    lm = tiny_lm("rec_fixed_skip")
    return scoring.score_documents(
        lm, _texts(), batch_size=2, reset_state=reset_state, keep_tokens=True
    )


def _forward_nll(lm, text):
    """Per-target NLL of one forward pass over the whole document."""
    ids = np.frombuffer(text, np.uint8).astype("int32") + 4  # ByteTokenizer ids
    logits = keras.ops.convert_to_numpy(lm(ids[None]))[0].astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return -logp[np.arange(len(ids) - 1), ids[1:]], ids  # nll[t - 1] predicts token t


def test_position_buckets():
    got = scoring.position_bucket([0, 1, 255, 256, 511, 512, 1023, 1024, 5000])
    assert got.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 5]
    assert [scoring.bucket_bounds(k) for k in range(3)] == [
        (0, 255),
        (256, 511),
        (512, 1023),
    ]


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    tokens = rng.integers(100, 1000, 200)
    bits = tokens * rng.normal(2.0, 0.3, 200)
    lo, hi = scoring.bootstrap_interval(bits, tokens, samples=500)
    assert lo < bits.sum() / tokens.sum() < hi and hi - lo < 0.2
    assert scoring.bootstrap_interval(tokens * 2.0, tokens) == [2.0, 2.0]
    assert scoring.bootstrap_interval([], []) is None
    a = {"index": list(range(200)), "tokens": tokens.tolist(), "bytes": tokens.tolist()}
    run_a = {"per_document": dict(a, nll_bits=bits.tolist())}
    run_b = {"per_document": dict(a, nll_bits=(bits + 0.1 * tokens).tolist())}
    same = scoring.paired_difference(run_a, run_a)
    assert same["difference"] == 0 and same["interval"] == [0.0, 0.0]
    diff = scoring.paired_difference(run_a, run_b)
    assert diff["documents"] == 200 and np.isclose(diff["difference"], 0.1)
    # Paired: the documents' spread cancels, so the interval is tight around 0.1.
    assert 0.1 - 1e-9 <= diff["interval"][0] <= diff["interval"][1] <= 0.1 + 1e-9


def test_per_document_buckets_and_same_documents_curves():
    """Per-document bucket sums add up, and a curve over one fixed set of documents is
    free of the long-document bias that makes the plain curve rise."""
    L = 256
    runs = []
    for fall in (0.0, 0.5):  # loss per token falls by `fall` after position 256
        scores = scoring.Scores(3)
        # Document 0: 256 tokens, easy (1 nat); documents 1 and 2: 1024 tokens, hard (3 nats).
        for doc, length, level in ((0, 256, 1.0), (1, 1024, 3.0), (2, 1024, 3.0)):
            for start in range(0, length, L):
                nll = np.full((1, L), level - (fall if start >= 256 else 0.0))
                weights = np.ones((1, L))
                weights[0, -1] = 0  # a segment's last input has no target
                scores.add([doc], [start], nll, weights, [L])
        result = {
            "per_document": scores.per_document(),
            "by_position": scores.by_position(),
        }
        runs.append(result)
        per_doc = result["per_document"]
        assert per_doc["index"] == [0, 1, 2]
        assert [len(t) for t in per_doc["bucket_tokens"]] == [1, 3, 3]
        assert [sum(t) for t in per_doc["bucket_tokens"]] == per_doc["tokens"]
        np.testing.assert_allclose(
            [sum(b) for b in per_doc["bucket_nll_bits"]], per_doc["nll_bits"], atol=1e-3
        )
    flat, falling = runs
    # The plain curve rises from bucket 0 to 1 (only the hard documents reach 256).
    plain = [b["bits_per_token"] for b in flat["by_position"]]
    assert plain[1] > plain[0]
    same = scoring.same_documents_by_position([flat, falling], reach=512)
    assert same["documents"] == [1, 2]
    curves = [[b["bits_per_token"] for b in c] for c in same["curves"]]
    np.testing.assert_allclose(curves[0], [3 / np.log(2)] * 3)
    np.testing.assert_allclose(curves[1], [3 / np.log(2)] + [2.5 / np.log(2)] * 2)
    assert scoring.same_documents_by_position([flat], reach=2048) is None
    assert (
        scoring.same_documents_by_position([flat], reach=512, min_documents=3) is None
    )
    # How much more `falling` drops than `flat` from bucket 0 to bucket 2, per document.
    d = scoring.paired_bucket_contrast(
        [falling, falling, flat, flat], [1, -1, -1, 1], [0, 2, 0, 2], [1, 2], samples=50
    )
    assert np.isclose(d["difference"], 0.5 / np.log(2)) and d["documents"] == 2
    old = {
        "per_document": {
            k: v for k, v in flat["per_document"].items() if "bucket" not in k
        }
    }
    with pytest.raises(ValueError, match="--by_position"):
        scoring.same_documents_by_position([old], reach=512)


@pytest.mark.model
def test_never_equals_one_forward_pass():
    lm = tiny_lm("rec_fixed_skip")
    L = lm.segment_length
    texts = _texts()
    scores = _scores("never")
    for d, text in enumerate(texts):
        nll, ids = _forward_nll(lm, text)
        positions, got = scores.token_losses(d)
        # Every target except the first token of each later segment (as in training).
        expected = [t for t in range(1, len(ids)) if t % L]
        assert positions.tolist() == expected
        np.testing.assert_allclose(got, nll[positions - 1], atol=2e-4, rtol=1e-4)
    assert scores.total_tokens == sum(len(t) - 1 - (len(t) - 1) // L for t in texts)
    buckets = scores.by_position()
    assert [(b["start"], b["end"]) for b in buckets] == [(0, 149)]
    assert buckets[0]["tokens"] == scores.total_tokens


@pytest.mark.model
def test_max_tokens_counts_scored_tokens():
    """--max_tokens stops on tokens scored (a segment cap also counts idle slots:
    the books test split has 5 documents for 4 slots and stopped at 465k of 1M)."""
    lm = tiny_lm("rec_fixed_skip")
    full = _scores("never")
    part = scoring.score_documents(lm, _texts(), batch_size=2, max_tokens=60)
    assert not part.complete and 60 <= part.total_tokens < full.total_tokens
    assert full.complete


@pytest.mark.model
def test_every_segment_resets_state_and_caches():
    lm = tiny_lm("rec_fixed_skip")
    L = lm.segment_length
    texts = _texts()
    carried, reset = _scores("never"), _scores("every_segment")
    for d, text in enumerate(texts):
        pos_c, nll_c = carried.token_losses(d)
        pos_r, nll_r = reset.token_losses(d)
        assert pos_c.tolist() == pos_r.tolist()
        first = pos_r < L
        np.testing.assert_allclose(nll_r[first], nll_c[first], atol=1e-5)
        if len(text) > L:  # later segments see neither the cache nor the state
            assert np.abs(nll_r[~first] - nll_c[~first]).max() > 1e-3
        # Each segment scores exactly as the segment on its own, from a fresh state.
        for k in range(0, len(text), L):
            alone, _ = _forward_nll(lm, text[k : k + L])
            sel = (pos_r > k) & (pos_r < k + L)
            np.testing.assert_allclose(
                nll_r[sel], alone[pos_r[sel] - k - 1], atol=2e-4, rtol=1e-4
            )
    with pytest.raises(ValueError, match="every_segment"):
        scoring.score_documents(lm, texts, reset_state="always")


def test_evaluate_binary_flags(tmp_path):
    from data import build as build_mod

    raw, data_dir = tmp_path / "raw", str(tmp_path / "tfds")
    text = open(os.path.join(testing.FIXTURES, "moby_dick_ch1-3.txt")).read()
    os.makedirs(raw)
    for i in range(40):
        (raw / f"p{i:02d}.txt").write_text(text[i * 700 : i * 700 + 300 + 40 * i])
    build_mod.build_text(str(raw), "moby_eval", data_dir)
    model_dir = tmp_path / "model"
    os.makedirs(model_dir)
    tiny_lm("rec_fixed_skip").save(str(model_dir / "model.keras"))
    config = {"corpus": "moby_eval", "data_dir": data_dir, "tokenizer": "bytes",
              "text_feature": None, "seed": 0}  # fmt: skip
    (model_dir / "config.json").write_text(json.dumps(config))
    other = {"label": "other model", "by_position": [
        {"start": 0, "end": 255, "tokens": 9, "bits_per_token": 7.0},
        {"start": 256, "end": 511, "tokens": 9, "bits_per_token": 6.5}]}  # fmt: skip
    (tmp_path / "other.json").write_text(json.dumps(other))

    proc = testing.run_module(
        "trainers.evaluate",
        ["--model_dir", str(model_dir), "--reset_state=every_segment", "--by_position",
         "--compare", str(tmp_path / "other.json"), "--bootstrap", "200",
         "--batch_size", "2"],
    )  # fmt: skip
    out = model_dir / "eval_test_reset_every_segment.json"
    result = json.loads(out.read_text())
    assert result["reset_state"] == "every_segment" and result["complete"]
    assert "(reset every_segment)" in result["label"]
    per_doc = result["per_document"]
    assert len(per_doc["index"]) == result["documents"] > 1
    assert sum(per_doc["tokens"]) == result["tokens"]
    assert np.isclose(sum(per_doc["nll_bits"]) / result["tokens"],
                      result["bits_per_token"], rtol=1e-5)  # fmt: skip
    lo, hi = result["bootstrap"]["bits_per_token"]
    assert lo <= result["bits_per_token"] <= hi
    buckets = result["by_position"]
    assert [b["start"] for b in buckets][:3] == [0, 256, 512]
    assert sum(b["tokens"] for b in buckets) == result["tokens"]
    longest = max(len(t) for t in _split_texts(data_dir))
    assert longest - 2 <= buckets[-1]["end"] <= longest - 1
    png = result["by_position_plot"]
    assert png.endswith("eval_test_reset_every_segment_by_position.png")
    assert os.path.getsize(png) > 1000
    assert (
        "per_document" not in proc.stdout
    )  # printed without the long per-document lists


def _split_texts(data_dir, split="test"):
    import data

    return data.load_documents("moby_eval", split, data_dir).texts
