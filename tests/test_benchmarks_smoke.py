"""Smoke tests of benchmarks/ on tiny sizes: no timing is asserted."""

import json

import numpy as np


def test_flops_count_matches_hand_formula():
    from benchmarks import flops
    from brt_keras.models.block_recurrent_backbone import BlockRecurrentBackbone

    b = BlockRecurrentBackbone(260, 2, 64, 4, 16, 128, 8)
    per_layer = 2 * (4 * 64 * 64 + 2 * 64 * 128) + 4 * 16 * 64
    assert flops.forward_flops_per_token(b) == 2 * 260 * 64 + 2 * per_layer
    assert flops.train_flops(b, 10) == 3 * 10 * flops.forward_flops_per_token(b)


def test_step_time_and_generation_run_on_tiny(tmp_path):
    from benchmarks import common
    from benchmarks import generation
    from benchmarks import step_time

    r = step_time.measure("slide_12", "tiny", None, 32, 1)
    assert r["segment"] == 32 and len(r["step_times_s"]) == 1
    assert np.isfinite(r["loss"])
    lm = common.build_lm("rec_fixed_skip", "tiny")
    g = generation.decode_timing(lm, 16, 10)
    assert g["new_tokens"] == 10 and g["step_ms"] > 0
    common.report("smoke", "smoke", ["a"], [[1.0]], {"r": r}, str(tmp_path))
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert data["table"]["rows"] == [[1.0]] and "machine" in data
