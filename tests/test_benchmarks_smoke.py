"""Smoke tests of benchmarks/ on tiny sizes: no timing is asserted."""

import json

import numpy as np
import pytest


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


@pytest.mark.model
def test_train_step_learns_and_leaves_usable_variables():
    """The benchmarks' compiled step (JAX: donated weights and optimizer
    slots) trains, and the model's variables stay readable after it."""
    import keras

    from benchmarks import common

    lm = common.build_lm("rec_fixed_skip", "tiny")
    step = common.TrainStep(lm, optimizer=keras.optimizers.Adam(0.01))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 20, size=(2, 32)).astype("int32")
    targets = np.roll(ids, -1, axis=1)
    state = lm.get_initial_state(2)
    sos = np.ones((2,), bool)
    first = before = None
    for i in range(6):
        loss, state = step(ids, targets, state, sos)
        if i == 0:
            first = float(np.asarray(loss))
            before = [np.array(keras.ops.convert_to_numpy(v)) for v in lm.weights]
    after = [np.array(keras.ops.convert_to_numpy(v)) for v in lm.weights]
    assert float(np.asarray(loss)) < first
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    # The weights the step wrote are the model's: a plain call reads them.
    logits, _ = lm.call_with_state(ids, lm.get_initial_state(2), start_of_sequence=sos)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))


@pytest.mark.model
def test_train_step_with_loss_chunks_matches_full_logits():
    """The step the memory numbers come from (`loss_chunk_tokens`) trains
    exactly as the full-logits step: same losses over three SGD steps."""
    import keras

    from benchmarks import common

    ids = np.random.default_rng(1).integers(0, 260, size=(2, 33)).astype("int32")
    losses = {}
    for chunk in (None, 24):
        keras.utils.set_random_seed(0)
        lm = common.build_lm(
            "rec_fixed_skip", "tiny", dropout=0.0, loss_chunk_tokens=chunk
        )
        step = common.TrainStep(lm, optimizer=keras.optimizers.SGD(0.5))
        state, sos = lm.get_initial_state(2), np.ones((2,), bool)
        losses[chunk] = []
        for _ in range(3):
            loss, state = step(ids[:, :-1], ids[:, 1:], state, sos)
            losses[chunk].append(float(np.asarray(loss)))
    np.testing.assert_allclose(losses[24], losses[None], rtol=1e-5)
    assert losses[None][-1] < losses[None][0]


def test_jax_vs_tf_dots_and_step_parts_run():
    from benchmarks import jax_vs_tf

    for only, names in (("dots", jax_vs_tf.DOTS), ("step-parts", jax_vs_tf.STEP_PARTS)):
        out = jax_vs_tf.measure(True, 1, only=only)
        assert list(out) == list(names) and all(ms > 0 for ms in out.values())


def test_step_memory_breakdown():
    from benchmarks import step_memory

    r = step_memory.measure("rec_fixed_skip", "tiny", 32, 0.0, True, {})
    alone = r["peak_gib"].pop("step 2 alone")  # this machine's kernel allows the reset
    peaks = list(r["peak_gib"].values())
    assert list(r["peak_gib"]) == ["import", "build", "step 1 (compile)", "step 2"]
    assert peaks == sorted(peaks) and r["tokens_per_step"] == 32
    # The second step's own peak is positive and no more than the process's.
    assert 0 < alone <= r["peak_gib"]["step 2"]

    def run(layers, vocab, build, step):
        return {
            "layers": layers,
            "vocabulary_size": vocab,
            "peak_gib": {"build": build, "step 2": step},
        }

    # 12 layers at 0.25 each, 0.8 for the output layer, 1.0 fixed, 1.2 to build.
    parts = step_memory.breakdown(
        run(12, 32128, 1.2, 1.2 + 0.8 + 3.0 + 1.0),
        run(12, 260, 1.1, 1.1 + 3.0 + 1.0),
        run(4, 260, 1.0, 1.0 + 1.0 + 1.0),
    )
    assert np.isclose(parts["per layer"], 0.25)
    assert np.isclose(parts["output layer, logits and their gradients"], 0.9)
    assert np.isclose(parts["fixed cost of the step"], 6.0 - 1.2 - 0.9 - 3.0)


def test_utilisation_runs_with_loss_chunks(tmp_path):
    """`--loss-chunk-tokens` reaches the child's model (the step trains with
    the chunked loss) and the report counts the same model FLOPs."""
    from benchmarks import utilisation

    utilisation.main(
        [
            "--quick",
            "--presets",
            "rec_fixed_skip",
            "--dropouts",
            "0",
            "--loss-chunk-tokens",
            "8",
            "--out-dir",
            str(tmp_path),
        ]
    )
    (r,) = json.loads((tmp_path / "utilisation.json").read_text())["results"]
    assert r["loss_chunk_tokens"] == 8 and np.isfinite(r["loss"])
    assert 0 < r["utilisation"] and r["model_tflops_per_step"] > 0


def test_attention_chunks_runs_and_chunks_agree(tmp_path):
    from benchmarks import attention_chunks

    attention_chunks.main(["--quick", "--out-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "attention_chunks.json").read_text())["table"]["rows"]
    assert [r[1] for r in rows] == [16, 8, 4]
    assert [r[2] for r in rows] == [1.0, 0.75, 0.625]  # logits vs [W, 2W]
    assert all(r[-1] < 1e-5 for r in rows)  # same loss to round-off


def test_utilisation_passes_the_query_chunk_size(tmp_path):
    from benchmarks import utilisation

    utilisation.main(
        [
            "--quick",
            "--presets",
            "slide_13",
            "--dropouts",
            "0",
            "--query-chunk-size",
            "4",
            "--out-dir",
            str(tmp_path),
        ]
    )
    (r,) = json.loads((tmp_path / "utilisation.json").read_text())["results"]
    assert r["query_chunk_size"] == 4 and np.isfinite(r["loss"])
