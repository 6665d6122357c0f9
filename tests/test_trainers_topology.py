"""JAX training on several devices or processes, with Orbax checkpoints:
each topology equals the single-device run, and resumes onto another
topology exactly.

Each topology (DataParallel on 4 host devices, ModelParallel mesh 2x2, two
processes on localhost) trains 4 steps once (checkpoints at steps 2 and 4),
shared by two tests:
- its losses and carried state equal the single-device run's within 1e-4
  (same global batch, dropout off);
- a copy of its run directory without the step-4 checkpoint (as a run killed
  during step 3 leaves it) resumes on another topology, and steps 3-4 and the
  step-4 checkpoint (weights, optimizer slots, carried state) equal the
  uninterrupted run within 1e-5.
Each run is a fresh subprocess. (MirroredStrategy, the TensorFlow route, is
in test_trainers_distributed.py.)
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


def _equal_to_single(name, single, multi, slot_order=None):
    """Same global batch, dropout off: the losses and the carried state of a
    run on several devices equal the single-device run's."""
    (l1, a1), (l2, a2) = single, multi
    assert len(l1) == len(l2) == 4
    diffs = {"loss": float(np.max(np.abs(l1 - l2)))}
    s1, s2 = a1["stream"], a2["stream"]
    diffs["stream"] = max(
        float(
            np.max(np.abs((s1[k] if slot_order is None else s1[k][slot_order]) - s2[k]))
        )
        for k in s1
    )
    print(f"{name} vs one device: max |difference| {diffs}")
    assert max(diffs.values()) < 1e-4, diffs


def _resumed_equals_straight(name, straight, tmp_path, resume_b):
    resumed = str(tmp_path / "resumed")
    _killed_after_step_2(straight, resumed)
    proc = resume_b(resumed)
    assert "Resuming from step 2" in proc.stdout, proc.stdout[-2000:]
    _compare(name, _final(straight), _final(resumed))


# Each topology trains once; its equality and resume tests share the run.
@pytest.fixture(scope="module")
def single(data_dir, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("single"))
    _train(data_dir, d)
    return _final(d)


@pytest.fixture(scope="module")
def data_parallel_4(data_dir, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("dp4"))
    _train(data_dir, d, *DP, "--cpu_devices", "4")
    return d


@pytest.fixture(scope="module")
def model_parallel_2x2(data_dir, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("mp2x2"))
    _train(data_dir, d, *MP, "2,2")
    return d


@pytest.fixture(scope="module")
def two_processes(data_dir, tmp_path_factory):
    """Two processes on localhost write one run directory and one checkpoint
    (each its shards and its data position)."""
    d = str(tmp_path_factory.mktemp("two_processes"))
    _train_processes(data_dir, d, 2, *DP)
    return d


DP = ["--strategy", "jax_data_parallel"]
MP = ["--strategy", "jax_model_parallel", "--cpu_devices", "4", "--mesh"]


def test_data_parallel_four_devices_equals_one(single, data_parallel_4):
    _equal_to_single("DataParallel x4", single, _final(data_parallel_4))


def test_model_parallel_2x2_equals_one(single, model_parallel_2x2):
    _equal_to_single("ModelParallel 2x2", single, _final(model_parallel_2x2))


def test_two_processes_equal_one(single, two_processes):
    # No process_<i> copies; each process saved its own data shard position.
    names = sorted(os.listdir(two_processes))
    assert not [n for n in names if n.startswith("process_")], names
    data = os.listdir(os.path.join(two_processes, "checkpoints", "data", "00000002"))
    assert sorted(data) == ["shard-00000-of-00002", "shard-00001-of-00002"]
    # Process p's local slot b reads the documents of the single run's slot
    # 2b + p; the global batch is process-major: [p0b0, p0b1, p1b0, p1b1].
    _equal_to_single(
        "two JAX processes", single, _final(two_processes), slot_order=[0, 2, 1, 3]
    )


def test_data_parallel_four_devices_resumed_on_two(data_dir, tmp_path, data_parallel_4):
    _resumed_equals_straight(
        "DataParallel 4 -> 2 devices",
        data_parallel_4,
        tmp_path,
        lambda d: _train(data_dir, d, *DP, "--cpu_devices", "2"),
    )


def test_model_parallel_2x2_resumed_on_4x1(data_dir, tmp_path, model_parallel_2x2):
    _resumed_equals_straight(
        "ModelParallel mesh 2x2 -> 4x1",
        model_parallel_2x2,
        tmp_path,
        lambda d: _train(data_dir, d, *MP, "4,1"),
    )


def test_two_processes_resumed_by_one(data_dir, tmp_path, two_processes):
    """One process resumes the two processes' checkpoint, reading both data
    shards."""
    _resumed_equals_straight(
        "two processes -> one",
        two_processes,
        tmp_path,
        lambda d: _train(data_dir, d, *DP, "--cpu_devices", "2"),
    )
