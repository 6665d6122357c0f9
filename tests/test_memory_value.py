"""benchmarks.memory_value's reading of the issue-10 targets from evaluations."""

import argparse

from benchmarks import memory_value


def _eval(bits_per_doc, curve):
    """A trainers.evaluate-shaped result: per-document totals and a by-position curve."""
    docs = len(bits_per_doc)
    tokens = [1000] * docs
    return {
        "bits_per_token": sum(bits_per_doc) / sum(tokens),
        "per_document": {
            "index": list(range(docs)),
            "tokens": tokens,
            "bytes": tokens,
            "nll_bits": list(bits_per_doc),
        },
        "by_position": [
            {"start": s, "end": 2 * s or 256, "tokens": n, "bits_per_token": b}
            for s, n, b in curve
        ],
    }


ARGS = argparse.Namespace(
    presets="rec_fixed_skip,slide_12",
    bootstrap=200,
    eval_tokens=10_000,
    receptive_field=256,
    min_documents=8,
)


def test_curve_drop_reads_the_fall_past_the_receptive_field():
    curve = _eval(
        [1.0], [(0, 500, 3.0), (256, 500, 2.0), (512, 900, 1.5), (1024, 10, 0.1)]
    )
    drop = memory_value.curve_drop(curve["by_position"], 256, min_tokens=200)
    # The last bucket has too few tokens to count: 2.0 -> 1.5.
    assert drop == {
        "from": 256,
        "to": 512,
        "from_bits": 2.0,
        "to_bits": 1.5,
        "drop": 0.5,
    }
    assert memory_value.curve_drop(curve["by_position"], 4096, 1) is None


def test_targets_met_and_missed_are_told_apart():
    flat = [(0, 500, 3.0), (256, 500, 2.0), (512, 500, 2.0)]
    falling = [(0, 500, 3.0), (256, 500, 2.0), (512, 500, 1.6)]
    rec = {
        "never": _eval([1500 + i for i in range(20)], falling),
        "every_segment": _eval([1700 + i for i in range(20)], flat),
    }
    rec["difference"] = memory_value.paired_difference(
        rec["never"], rec["every_segment"], 200
    )
    slide = {"never": _eval([1600 + 3 * i for i in range(20)], flat)}
    results = {("code", "rec_fixed_skip"): rec, ("code", "slide_12"): slide}
    found, notes = memory_value.target_notes(results, "code", ARGS)
    assert found["slide_12 - rec_fixed_skip"]["met"]
    assert found["rec_fixed_skip reset - carried"]["met"]
    drops = found["drop_past_receptive_field"]
    assert drops["rec_fixed_skip"]["drop"] > 0.3 and drops["slide_12"]["drop"] == 0.0
    # rec loses 200 bits per document on reset; slide_12 has no reset run.
    assert "rec_fixed_skip reset cost - slide_12's" not in found
    slide["every_segment"] = _eval([1650 + 3 * i for i in range(20)], flat)
    found, _ = memory_value.target_notes(results, "code", ARGS)
    cost = found["rec_fixed_skip reset cost - slide_12's"]
    assert abs(cost["difference"] - 0.15) < 1e-9 and cost["interval"][0] > 0.1
    assert found["order"] == ["rec_fixed_skip", "slide_12"]
    gaps = found["slide_12 - rec_fixed_skip by position"]
    assert [g["start"] for g in gaps] == [0, 256, 512]
    assert abs(gaps[2]["gap"] - 0.4) < 1e-9 and gaps[0]["gap"] == 0.0
    assert any("(same)" in n for n in notes)

    # Swapped: slide_12 better, so the first target reads as missed.
    results = {
        ("code", "rec_fixed_skip"): slide | {"never": slide["never"]},
        ("code", "slide_12"): {"never": rec["never"]},
    }
    found, notes = memory_value.target_notes(results, "code", ARGS)
    assert not found["slide_12 - rec_fixed_skip"]["met"]
    assert any("NOT better" in n for n in notes) and any(
        "(differs)" in n for n in notes
    )


def _eval_buckets(levels):
    """An evaluation whose documents have per-bucket losses `levels[doc]` (bits/token,
    100 tokens per bucket), as trainers.evaluate writes them with --by_position."""
    per_doc = {"index": [], "tokens": [], "bytes": [], "nll_bits": []}
    per_doc |= {"bucket_nll_bits": [], "bucket_tokens": []}
    for i, row in enumerate(levels):
        per_doc["index"].append(i)
        per_doc["bucket_tokens"].append([100] * len(row))
        per_doc["bucket_nll_bits"].append([100 * b for b in row])
        per_doc["tokens"].append(100 * len(row))
        per_doc["bytes"].append(100 * len(row))
        per_doc["nll_bits"].append(100 * sum(row))
    total = sum(per_doc["nll_bits"]) / sum(per_doc["tokens"])
    return {"bits_per_token": total, "per_document": per_doc, "by_position": []}


def test_same_documents_targets():
    # 12 short easy documents (bucket 0 only) and 10 long hard ones (buckets 0-3):
    # the plain curves rise with position, but on the long documents rec_fixed_skip
    # keeps falling past the receptive field (bucket 1) and slide_12 stays flat.
    noise = [0.01 * (i % 3) for i in range(10)]
    short = [[1.0]] * 12
    rec = _eval_buckets(short + [[3.0 + n, 2.8 + n, 2.6 + n, 2.4 + n] for n in noise])
    slide = _eval_buckets(short + [[3.0 + n, 2.8 + n, 2.8 + n, 2.8 + n] for n in noise])
    args = argparse.Namespace(**vars(ARGS))
    carried = {"rec_fixed_skip": rec, "slide_12": slide}
    found, notes = memory_value.same_document_notes(carried, "code", args)
    assert found["documents"] == 10 and found["reach"] == 1024
    assert found["drop"]["rec_fixed_skip"]["met"]
    assert not found["drop"]["slide_12"]["met"]
    beyond = found["rec_fixed_skip falls beyond slide_12"]
    assert beyond["met"] and abs(beyond["difference"] - 0.4) < 1e-9
    gaps = found["slide_12 - rec_fixed_skip by position"]
    assert [g["start"] for g in gaps] == [0, 256, 512, 1024]
    assert abs(gaps[3]["difference"] - 0.4) < 1e-9 and gaps[0]["difference"] == 0
    assert any("(met)" in n for n in notes)
    # Both flat: missed. Too few long documents: said so, nothing computed.
    found, notes = memory_value.same_document_notes(
        {"rec_fixed_skip": slide, "slide_12": slide}, "code", args
    )
    assert not found["rec_fixed_skip falls beyond slide_12"]["met"]
    args.min_documents = 11
    found, notes = memory_value.same_document_notes(carried, "code", args)
    assert found is None and "fewer than 11 documents" in notes[0]
