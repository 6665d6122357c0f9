"""Run directories on remote file systems (issue 11, finding 4).

* End to end on a local GCS emulator (``gs://``, started here on 127.0.0.1):
  train (JAX, Orbax checkpoints), kill -9, resume, evaluate, export.
* The TensorFlow backend's checkpoints, config and model.keras through
  ``tf.io.gfile`` on TensorFlow's ``ram://`` file system, and on the emulator.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers import common
from trainers import gcs_emulator
from trainers import paths
from trainers import testing

BUCKET = "runs"
TINY = [
    "--size",
    "tiny",
    "--batch_size",
    "2",
    "--override",
    "dropout=0.0",
    "--warmup_steps",
    "1",
    "--verbose",
    "0",
    "--save_plot=false",
]


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.running(bucket=BUCKET) as env:
        yield env


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return testing.make_fixture_corpus(str(tmp_path_factory.mktemp("corpus")))


def _committed_steps(ckpts):
    return sorted(
        int(n.split("_")[1])
        for n in paths.listdir(ckpts)
        if n.startswith("ckpt_")
        and paths.exists(paths.join(ckpts, n, "commit_success.txt"))
    )


@pytest.mark.slow
def test_gcs_train_kill_resume_evaluate_export(gcs, data_dir):
    run = f"gs://{BUCKET}/{uuid.uuid4().hex}/run"
    ckpts = paths.join(run, "checkpoints")
    train = [sys.executable, "-m", "trainers.train", "--model_dir", run]
    train += ["--data_dir", data_dir, "--backend", "jax", *TINY]
    env = testing.env_for("jax")
    # Trains "forever"; killed (-9) once a checkpoint is committed.
    proc = subprocess.Popen(
        train + ["--steps", "1000", "--checkpoint_every", "2"],
        cwd=testing.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 1200
        while not _committed_steps(ckpts):
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.time() < deadline, "no checkpoint after 1200 s"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    step = _committed_steps(ckpts)[-1]
    # The old trainer wrote gs:// URLs as local paths (a "gs:" directory).
    assert not os.path.exists(os.path.join(testing.REPO, "gs:"))
    assert (
        json.loads(paths.read_text(paths.join(run, "config.json")))["backend"] == "jax"
    )

    resumed = testing.run_module(
        "trainers.train",
        train[3:] + ["--steps", str(step + 2), "--checkpoint_every", "2"],
        backend="jax",
        timeout=1800,
    )
    assert f"Resuming from step {step}" in resumed.stdout, resumed.stdout[-2000:]
    history = [
        json.loads(x)
        for x in paths.read_text(paths.join(run, "history.jsonl")).splitlines()
    ]
    assert [r["step"] for r in history] == list(range(1, step + 3))
    for name in ("model.keras", "train_summary.json", "tensorboard"):
        assert paths.exists(paths.join(run, name)), name
    assert step + 2 in _committed_steps(ckpts)

    proc = testing.run_module(
        "trainers.evaluate",
        ["--model_dir", run, "--batch_size", "2", "--max_segments", "2"],
    )
    result = json.loads(paths.read_text(paths.join(run, "eval_test.json")))
    assert result["tokens"] > 0 and np.isfinite(result["bits_per_token"])

    export_dir = run.rsplit("/", 1)[0] + "/export"
    testing.run_module(
        "trainers.export", ["--model_dir", run, "--export_dir", export_dir]
    )
    exported = json.loads(paths.read_text(paths.join(export_dir, "export.json")))
    assert max(exported["max_abs_diff_vs_keras"].values()) < 1e-4
    assert paths.exists(paths.join(export_dir, "saved_model", "saved_model.pb"))
    assert paths.exists(paths.join(export_dir, "model.keras"))


def _tiny_training_state():
    from trainers.checkpoints import CheckpointManager  # noqa: F401 (TF backend format)

    config = common.resolve_model_config("rec_fixed_skip", "tiny", ["dropout=0.0"])
    lm = common.build_lm(config, 0)
    model = common.build_stream_model(lm, 2)
    optimizer = common.make_optimizer("adafactor", "rsqrt", None, 1, 10)
    model.compile(optimizer=optimizer, loss=common.training_loss())
    optimizer.build(model.trainable_variables)
    iterator = iter(tf.data.Dataset.range(100))
    return lm, model, optimizer, iterator


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the TensorFlow backend's checkpoint format (JAX runs use Orbax)",
)
@pytest.mark.parametrize("scheme", ["ram", "gs"])
def test_tensorflow_checkpoints_config_and_model_on(scheme, request):
    from trainers.checkpoints import CheckpointManager

    if scheme == "gs":
        request.getfixturevalue("gcs")
        run = f"gs://{BUCKET}/{uuid.uuid4().hex}/run"
    else:
        run = f"ram://{uuid.uuid4().hex}/run"
    lm, model, optimizer, iterator = _tiny_training_state()
    for _ in range(3):
        next(iterator)
    for v in optimizer.variables:
        v.assign(np.random.default_rng(0).random(v.shape).astype(v.dtype))
    state = {k: v + 1.0 for k, v in common.get_stream_state(model).items()}
    manager = CheckpointManager(paths.join(run, "checkpoints"), keep=1)
    manager.save(3, lm, optimizer, state, iterator)
    manager.save(5, lm, optimizer, state, iterator)
    assert [paths.basename(p) for p in manager.checkpoints()] == ["ckpt-00000005"]
    common.write_json(paths.join(run, "config.json"), {"model": {"x": 1}})
    assert common.read_config(run) == {"model": {"x": 1}}
    common.save_keras(lm, paths.join(run, "model.keras"))

    lm2, _, optimizer2, iterator2 = _tiny_training_state()
    restored = manager.restore(lm2, optimizer2, iterator2)
    assert restored.manifest["step"] == 5
    assert int(next(iterator2)) == 3
    for a, b in zip(
        lm.weights + optimizer.variables, lm2.weights + optimizer2.variables
    ):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    for k in state:
        np.testing.assert_array_equal(restored.state[k], state[k])
    loaded = common.load_lm(run)
    ids = np.arange(1, 65, dtype="int32").reshape(2, 32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(ids)),
        keras.ops.convert_to_numpy(lm(ids)),
        atol=1e-6,
    )
