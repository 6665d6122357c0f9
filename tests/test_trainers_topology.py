"""Orbax checkpoints (JAX) resume onto another device topology exactly.

Each case trains 4 steps on topology A (checkpoints at steps 2 and 4), then
copies the run directory without its step-4 checkpoint (as a run killed
during step 3 leaves it) and resumes it on topology B. Steps 3-4 and the
step-4 checkpoint (weights, optimizer slots, carried state) must equal the
uninterrupted run within 1e-5 (dropout off). Each run is a fresh subprocess.
"""

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from trainers import testing

pytestmark = pytest.mark.slow
COMMON = [
    "--size",
    "tiny",
    "--batch_size",
    "4",
    "--override",
    "dropout=0.0",
    "--steps",
    "4",
    "--checkpoint_every",
    "2",
    "--warmup_steps",
    "1",
    "--verbose",
    "0",
    "--save_plot=false",
    "--backend",
    "jax",
]
TOL = 1e-5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return testing.make_fixture_corpus(str(tmp_path_factory.mktemp("corpus")))


def _train(data_dir, model_dir, *extra):
    return testing.run_module(
        "trainers.train",
        ["--model_dir", model_dir, "--data_dir", data_dir, *COMMON, *extra],
        backend="jax",
        timeout=1800,
    )


def _train_processes(data_dir, model_dir, n, *extra):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trainers.train", "--model_dir", model_dir]
            + ["--data_dir", data_dir, *COMMON, *extra]
            + ["--num_processes", str(n), "--process_id", str(pid)]
            + ["--coordinator_address", f"localhost:{port}"],
            cwd=testing.REPO,
            env=testing.env_for("jax"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(n)
    ]
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]


def _killed_after_step_2(src, dst):
    """A copy of run `src` as a kill during step 3 would have left it."""
    shutil.copytree(src, dst)
    shutil.rmtree(os.path.join(dst, "checkpoints", "ckpt_00000004"))
    shutil.rmtree(os.path.join(dst, "checkpoints", "data", "00000004"))
    for name in ("model.keras", "train_summary.json"):
        os.remove(os.path.join(dst, name))


def _final(model_dir):
    from trainers import orbax_checkpoints

    ckpts = os.path.join(model_dir, "checkpoints")
    arrays = {
        item: orbax_checkpoints.read_arrays(ckpts, 4, item)
        for item in ("weights", "optimizer", "stream")
    }
    losses = np.array([r["loss"] for r in testing.read_history(model_dir)])
    return losses, arrays


def _compare(name, straight, resumed):
    (l1, a1), (l2, a2) = straight, resumed
    assert len(l1) == len(l2) == 4
    diffs = {"loss": float(np.max(np.abs(l1 - l2)))}
    for item in a1:
        assert a1[item].keys() == a2[item].keys(), item
        diffs[item] = max(
            float(np.max(np.abs(a1[item][k] - a2[item][k]))) for k in a1[item]
        )
    print(f"{name}: max |difference| {diffs}")
    assert max(diffs.values()) < TOL, diffs


def _case(data_dir, tmp_path, name, train_a, resume_b):
    straight = str(tmp_path / "straight")
    resumed = str(tmp_path / "resumed")
    train_a(straight)
    _killed_after_step_2(straight, resumed)
    proc = resume_b(resumed)
    assert "Resuming from step 2" in proc.stdout, proc.stdout[-2000:]
    _compare(name, _final(straight), _final(resumed))


def test_data_parallel_four_devices_resumed_on_two(data_dir, tmp_path):
    dp = ["--strategy", "jax_data_parallel", "--cpu_devices"]
    _case(
        data_dir,
        tmp_path,
        "DataParallel 4 -> 2 devices",
        lambda d: _train(data_dir, d, *dp, "4"),
        lambda d: _train(data_dir, d, *dp, "2"),
    )


def test_model_parallel_2x2_resumed_on_4x1(data_dir, tmp_path):
    mp = ["--strategy", "jax_model_parallel", "--cpu_devices", "4", "--mesh"]
    _case(
        data_dir,
        tmp_path,
        "ModelParallel mesh 2x2 -> 4x1",
        lambda d: _train(data_dir, d, *mp, "2,2"),
        lambda d: _train(data_dir, d, *mp, "4,1"),
    )


def test_two_processes_resumed_by_one(data_dir, tmp_path):
    """Two processes write one run directory and one checkpoint (each its
    shards and data position); one process resumes it, reading both data
    shards."""
    dp = ["--strategy", "jax_data_parallel"]

    def two(d):
        _train_processes(data_dir, d, 2, *dp)
        names = sorted(os.listdir(d))
        assert not [n for n in names if n.startswith("process_")], names
        data = os.listdir(os.path.join(d, "checkpoints", "data", "00000002"))
        assert sorted(data) == ["shard-00000-of-00002", "shard-00001-of-00002"]

    _case(
        data_dir,
        tmp_path,
        "two processes -> one",
        two,
        lambda d: _train(data_dir, d, *dp, "--cpu_devices", "2"),
    )
