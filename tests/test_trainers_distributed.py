"""Distributed training equals the single-device run (dropout off, same global
batch): MirroredStrategy on 2 logical CPUs, JAX DataParallel on 4 host
devices, two JAX processes on localhost. Each run is a fresh subprocess."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from trainers import testing

pytestmark = pytest.mark.slow
STEPS = 4
COMMON = [
    "--size",
    "tiny",
    "--batch_size",
    "4",
    "--override",
    "dropout=0.0",
    "--steps",
    str(STEPS),
    "--checkpoint_every",
    str(STEPS),
    "--warmup_steps",
    "1",
    "--verbose",
    "0",
    "--save_plot=false",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return testing.make_fixture_corpus(str(tmp_path_factory.mktemp("corpus")))


def _run(data_dir, model_dir, backend, *extra):
    testing.run_module(
        "trainers.train",
        ["--model_dir", model_dir, "--data_dir", data_dir, *COMMON, *extra],
        backend=backend,
    )
    return _results(model_dir)


def _results(model_dir):
    losses = np.array([r["loss"] for r in testing.read_history(model_dir)])
    ckpts = os.path.join(model_dir, "checkpoints")
    if os.path.isdir(os.path.join(ckpts, f"ckpt_{STEPS:08d}")):  # Orbax (JAX)
        from trainers import orbax_checkpoints

        return losses, orbax_checkpoints.read_arrays(ckpts, STEPS, "stream")
    state = np.load(os.path.join(ckpts, f"ckpt-{STEPS:08d}", "stream_state.npz"))
    return losses, dict(state)


def _compare(name, single, multi, slot_order=None):
    (l1, s1), (l2, s2) = single, multi
    loss_diff = float(np.max(np.abs(l1 - l2)))
    state_diff = 0.0
    for k in s1:
        a, b = s1[k], s2[k]
        if slot_order is not None:
            a = a[slot_order]
        state_diff = max(state_diff, float(np.max(np.abs(a - b))))
    print(
        f"{name}: losses {l1.round(5).tolist()} vs {l2.round(5).tolist()}; "
        f"max |loss diff| {loss_diff:.2e}, max |state diff| {state_diff:.2e}"
    )
    assert len(l1) == len(l2) == STEPS
    assert loss_diff < 1e-4
    assert state_diff < 1e-4


@pytest.fixture(scope="module")
def tf_single(data_dir, tmp_path_factory):
    return _run(data_dir, str(tmp_path_factory.mktemp("tf_single")), "tensorflow")


@pytest.fixture(scope="module")
def jax_single(data_dir, tmp_path_factory):
    return _run(data_dir, str(tmp_path_factory.mktemp("jax_single")), "jax")


def test_mirrored_two_cpus(data_dir, tmp_path, tf_single):
    multi = _run(
        data_dir,
        str(tmp_path),
        "tensorflow",
        "--strategy",
        "mirrored",
        "--cpu_devices",
        "2",
    )
    _compare("MirroredStrategy x2", tf_single, multi)


def test_jax_data_parallel_four_devices(data_dir, tmp_path, jax_single):
    multi = _run(
        data_dir,
        str(tmp_path),
        "jax",
        "--strategy",
        "jax_data_parallel",
        "--cpu_devices",
        "4",
    )
    _compare("JAX DataParallel x4", jax_single, multi)


def test_jax_model_parallel(data_dir, tmp_path, jax_single):
    multi = _run(
        data_dir,
        str(tmp_path),
        "jax",
        "--strategy",
        "jax_model_parallel",
        "--cpu_devices",
        "4",
        "--mesh",
        "2,2",
    )
    _compare("JAX ModelParallel 2x2", jax_single, multi)


def test_two_jax_processes(data_dir, tmp_path, jax_single):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    model_dir = str(tmp_path)
    procs = []
    for pid in range(2):
        args = [
            sys.executable,
            "-m",
            "trainers.train",
            "--model_dir",
            model_dir,
            "--data_dir",
            data_dir,
            *COMMON,
            "--backend",
            "jax",
            "--strategy",
            "jax_data_parallel",
            "--num_processes",
            "2",
            "--process_id",
            str(pid),
            "--coordinator_address",
            f"localhost:{port}",
        ]
        procs.append(
            subprocess.Popen(
                args,
                cwd=testing.REPO,
                env=testing.env_for("jax"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    # One run directory (no process_<i> copies). Process p's local slot b
    # reads the documents of the single run's slot 2b + p; the global batch
    # is process-major: [p0b0, p0b1, p1b0, p1b1].
    assert not [n for n in os.listdir(model_dir) if n.startswith("process_")]
    _compare(
        "two JAX processes", jax_single, _results(model_dir), slot_order=[0, 2, 1, 3]
    )
