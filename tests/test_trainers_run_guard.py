"""The run directory's guard, lock, preemption and progress, in process (fast).

The end-to-end checks with real trainer processes are in
tests/test_trainers_run_dir.py.
"""

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.conftest import tiny_lm
from trainers import checkpoints
from trainers import preemption
from trainers import run_dir
from trainers import run_lock
from trainers.progress import Progress

CONFIG = {
    "backend": "tensorflow",
    "preset": "rec_fixed_skip",
    "size": "tiny",
    "model": {"num_layers": 2, "window_length": 8, "sizes": (1, 2)},
    "corpus": "books",
    "tokenizer": "bytes",
    "data_dir": "/data/a",
    "batch_size": 4,
    "steps": 10,
    "checkpoint_every": 5,
    "keep_checkpoints": 3,
    "strategy": "default",
    "num_replicas": 1,
    "overrides": [],
    "seed": 0,
}


def changed(**kw):
    config = json.loads(json.dumps(CONFIG))
    for key, value in kw.items():
        target = config
        *path, last = key.split("__")
        for p in path:
            target = target[p]
        target[last] = value
    return config


def test_differences_lists_guarded_settings_only():
    other = changed(
        preset="slide_12",
        model__num_layers=4,
        batch_size=8,
        # allowed on resume:
        steps=20,
        checkpoint_every=2,
        keep_checkpoints=9,
        strategy="mirrored",
        num_replicas=2,
        data_dir="/data/b",
        overrides=["dropout=0.0"],
    )
    assert run_dir.differences(CONFIG, other) == [
        ("batch_size", 4, 8),
        ("model.num_layers", 2, 4),
        ("preset", "rec_fixed_skip", "slide_12"),
    ]
    # Tuples (in memory) and lists (read back from JSON) are the same value.
    assert run_dir.differences(json.loads(json.dumps(CONFIG)), CONFIG) == []
    # A setting only one side knows (another trainer version) is not compared.
    assert run_dir.differences({**CONFIG, "new_key": 1}, CONFIG) == []


def _write_run(model_dir, config=CONFIG):
    os.makedirs(os.path.join(model_dir, "checkpoints", "ckpt-00000005"))
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(model_dir, "model.keras"), "w") as f:
        f.write("weights")


def _snapshot(model_dir):
    out = {}
    for root, _, files in os.walk(model_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, model_dir)] = f.read()
    return out


def test_guard_refuses_another_configuration_and_changes_nothing(tmp_path):
    model_dir = str(tmp_path)
    _write_run(model_dir)
    before = _snapshot(model_dir)
    with pytest.raises(run_dir.ConfigMismatch) as e:
        run_dir.check(model_dir, changed(tokenizer="spm.model", batch_size=8))
    text = str(e.value)
    assert re.search(
        r'tokenizer +earlier run: "bytes"  this command: "spm.model"', text
    )
    assert "batch_size" in text and "--start_over" in text and "--model_dir" in text
    assert _snapshot(model_dir) == before
    # Allowed changes pass, and say what changed.
    notes = []
    run_dir.check(model_dir, changed(steps=50, data_dir="/data/b"), log=notes.append)
    assert any("steps changed from 10 to 50" in n for n in notes)
    assert _snapshot(model_dir) == before


def test_start_over_moves_the_earlier_run_aside(tmp_path):
    model_dir = str(tmp_path)
    _write_run(model_dir)
    before = _snapshot(model_dir)
    messages = []
    run_dir.check(model_dir, changed(preset="slide_12"), True, log=messages.append)
    (stamp,) = os.listdir(tmp_path / "previous")
    moved = os.path.join(model_dir, "previous", stamp)
    assert _snapshot(moved) == before
    assert sorted(os.listdir(model_dir)) == ["previous"]
    assert moved in messages[0] and "not deleted" in messages[0]


def test_a_run_that_never_trained_is_replaced(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump(CONFIG, f)
    notes = []
    run_dir.check(str(tmp_path), changed(preset="slide_12"), log=notes.append)
    assert "never trained" in notes[0]


# === checkpoints of another configuration ===


def _save(manager, lm, step):
    return manager.save(step, lm, None, {"state": np.zeros((2, 3), "float32")})


@pytest.mark.model
def test_checkpoint_of_another_configuration_is_not_corrupt_nor_rotated(tmp_path):
    lm = tiny_lm("rec_fixed_skip")
    directory = str(tmp_path / "checkpoints")
    warnings = []
    earlier = checkpoints.CheckpointManager(directory, keep=1, run_config=CONFIG)
    _save(earlier, lm, 5)
    other = changed(model__num_layers=4)
    manager = checkpoints.CheckpointManager(
        directory, keep=1, log=warnings.append, run_config=other
    )
    with pytest.raises(run_dir.ConfigMismatch) as e:
        manager.restore(lm, None)
    assert "model.num_layers" in str(e.value) and "ckpt-00000005" in str(e.value)
    assert not warnings  # not reported as corrupt
    # Rotation (keep=1) only ever deletes this configuration's checkpoints.
    _save(manager, lm, 10)
    _save(manager, lm, 20)
    names = sorted(os.listdir(directory))
    assert names == ["ckpt-00000005", "ckpt-00000020"], names


@pytest.mark.model
def test_corrupt_means_checksum_or_read_failure(tmp_path):
    lm = tiny_lm("rec_fixed_skip")
    warnings = []
    manager = checkpoints.CheckpointManager(
        str(tmp_path), keep=3, log=warnings.append, run_config=CONFIG
    )
    _save(manager, lm, 1)
    newest = _save(manager, lm, 2)
    with open(os.path.join(newest, "stream_state.npz"), "r+b") as f:
        f.write(b"garbage")
    restored = manager.restore(lm, None)
    assert restored.manifest["step"] == 1
    assert "ckpt-00000002 is corrupt (stream_state.npz fails its SHA-256" in warnings[0]
    # Intact but not fitting the model (an older checkpoint without a recorded
    # configuration): an error, never "corrupt", never skipped.
    bigger = tiny_lm("rec_fixed_skip", intermediate_dim=96)
    legacy = checkpoints.CheckpointManager(str(tmp_path / "legacy"))
    _save(legacy, bigger, 3)
    with pytest.raises(checkpoints.IncompatibleCheckpoint, match="intact"):
        checkpoints.CheckpointManager(
            str(tmp_path / "legacy"), log=warnings.append, run_config=CONFIG
        ).restore(lm, None)
    assert len(warnings) == 1


# === lock ===


def _write_lock(directory, host, pid):
    with open(os.path.join(directory, run_lock.LOCK_NAME), "w") as f:
        json.dump({"host": host, "pid": pid, "started": "then", "command": "x"}, f)


def test_lock_held_by_a_live_process_names_it(tmp_path):
    _write_lock(tmp_path, socket.gethostname(), os.getpid())
    with pytest.raises(run_lock.LockHeld) as e:
        run_lock.RunLock(str(tmp_path)).acquire()
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(e.value)
    # Another host's lock cannot be judged from here: held.
    _write_lock(tmp_path, "elsewhere", 1)
    with pytest.raises(run_lock.LockHeld, match="host elsewhere"):
        run_lock.RunLock(str(tmp_path)).acquire()


def test_stale_lock_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, socket.gethostname(), dead.pid)
    messages = []
    lock = run_lock.RunLock(str(tmp_path), log=messages.append)
    with pytest.raises(RuntimeError, match="boom"), lock:
        with open(lock.path) as f:
            assert json.load(f)["pid"] == os.getpid()
        raise RuntimeError("boom")
    assert f"stale lock {lock.path}" in messages[0] and str(dead.pid) in messages[0]
    assert os.listdir(tmp_path) == []  # released on the error, no temp files


# === preemption ===


@pytest.mark.model
def test_sigterm_stops_fit_after_the_current_batch():
    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((20, 3), "float32")
    with preemption.Preemption() as p:
        assert signal.getsignal(signal.SIGTERM) == p._handle
        model.fit(
            x, x[:, :1], batch_size=2, callbacks=[Kill(), p.callback()], verbose=0
        )
    assert p.signal_name == "SIGTERM"
    assert int(model.optimizer.iterations) == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# === progress ===


def test_progress_counts_the_runs_own_steps():
    out = io.StringIO()
    progress = Progress(10, start_step=4, verbose=1, stream=out)
    for step in range(5, 11):
        progress.update(step, loss=2.0, tokens_per_second=100.0)
        if step % 3 == 0:
            progress.end_chunk()
    lines = out.getvalue().splitlines()
    assert [re.match(r"step +(\d+)/10  ", line)[1] for line in lines] == [
        str(s) for s in range(5, 11)
    ]
    assert "ETA 0:00" in lines[-1] and "loss 2.0000" in lines[-1]
    out = io.StringIO()
    progress = Progress(10, start_step=4, verbose=2, stream=out)
    for step in range(5, 11):
        progress.update(step)
        if step in (7, 10):
            progress.end_chunk()
    lines = out.getvalue().splitlines()
    assert [line[: len("step 10/10")] for line in lines] == ["step  7/10", "step 10/10"]
