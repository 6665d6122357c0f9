"""Run directories end to end with real trainer processes (TF backend, tiny):
one writer per directory, preemption by real signals at random steps with an
exact resume, the configuration guard and --start_over, one progress display
(issue 11, findings 1, 2, 3 and 6)."""

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from trainers import preemption
from trainers import testing

pytestmark = pytest.mark.slow
STEPS = 12
ARGS = [
    "--steps",
    str(STEPS),
    "--checkpoint_every",
    "6",
    "--chunk_steps",
    "4",
    "--warmup_steps",
    "5",
    "--size",
    "tiny",
    "--batch_size",
    "4",
    "--override",
    "dropout=0.0",
    "--verbose",
    "1",
]


def start(model_dir, data_dir, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainers.train",
            "--model_dir",
            model_dir,
            "--data_dir",
            data_dir,
            *ARGS,
            *extra,
        ],
        cwd=testing.REPO,
        env=testing.env_for(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def train(model_dir, data_dir, *extra, check=True):
    return testing.run_module(
        "trainers.train",
        ["--model_dir", model_dir, "--data_dir", data_dir, *ARGS, *extra],
        check=check,
    )


def history_steps(model_dir):
    path = os.path.join(model_dir, "history.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def wait_for(condition, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def weights(model_dir, step=STEPS):
    import h5py

    path = os.path.join(
        model_dir, "checkpoints", f"ckpt-{step:08d}", "model.weights.h5"
    )
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda n, o: arrays.__setitem__(n, o[()]) if hasattr(o, "shape") else None
        )
    return arrays


def tree_digest(path):
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return testing.make_fixture_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    """An uninterrupted run; a second trainer is started on its directory
    while it holds it (the first is paused meanwhile, so the timing is sure)."""
    model_dir = str(tmp_path_factory.mktemp("straight"))
    first = start(model_dir, data_dir)
    lock = os.path.join(model_dir, "train.lock")
    # (The old trainer had no lock: then wait until it trains.)
    assert wait_for(lambda: os.path.exists(lock) or history_steps(model_dir), first), (
        first.communicate()
    )
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = train(model_dir, data_dir, check=False)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    return {
        "dir": model_dir,
        "pid": first.pid,
        "stdout": out,
        "second": second,
        "lock": lock,
    }


def test_second_trainer_on_a_directory_exits_2_naming_the_holder(straight):
    second = straight["second"]
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"pid {straight['pid']} on host {socket.gethostname()}" in second.stderr
    # The holder was not disturbed: one record per step, lock released.
    assert history_steps(straight["dir"]) == list(range(1, STEPS + 1))
    assert not os.path.exists(straight["lock"])


def test_one_progress_display_in_the_runs_steps(straight):
    out = straight["stdout"]
    assert "Epoch" not in out
    shown = [
        int(line.split()[1].split("/")[0])
        for line in out.splitlines()
        if line.startswith("step ") and line.split()[1].endswith(f"/{STEPS}")
    ]
    assert shown == list(range(1, STEPS + 1)), out[-3000:]


def test_preemption_by_signals_resumes_exactly(straight, data_dir, tmp_path):
    """SIGTERM and SIGINT at random steps: each stops after the current step
    with a checkpoint there and exit status 75; the resumed runs (the second
    with other allowed settings) end with the uninterrupted run's weights."""
    seed = int(os.environ.get("BRT_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    model_dir = str(tmp_path / "preempted")
    stops = []
    plan = [
        (signal.SIGTERM, ()),
        # Allowed changes on resume: chunking, cadence, rotation, logging.
        (
            signal.SIGINT,
            (
                "--chunk_steps",
                "3",
                "--checkpoint_every",
                "5",
                "--keep_checkpoints",
                "9",
                "--verbose",
                "2",
            ),
        ),
    ]
    for i, (sig, extra) in enumerate(plan):
        done = len(history_steps(model_dir))
        # The first signal comes in the first half, so the second always has
        # steps left to land in (a late first stop once left it none).
        last = STEPS // 2 - 1 if i + 1 < len(plan) else STEPS - 4
        if done + 1 > last:
            break
        target = rng.randint(done + 1, last)
        proc = start(model_dir, data_dir, *extra)
        wait_for(lambda t=target: len(history_steps(model_dir)) >= t, proc)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=600)
        where = f"seed {seed}, {sig.name} after step {target}:\n{out[-2000:]}\n{err[-3000:]}"
        assert proc.returncode == preemption.EXIT_STATUS, where
        stop = len(history_steps(model_dir))
        assert (
            stop >= target and f"{sig.name} received: stopped after step {stop}" in out
        )
        assert os.path.isdir(
            os.path.join(model_dir, "checkpoints", f"ckpt-{stop:08d}")
        ), where
        assert not os.path.exists(os.path.join(model_dir, "train.lock"))
        stops.append(stop)
    resumed = train(model_dir, data_dir)
    assert f"Resuming from step {stops[-1]}" in resumed.stdout
    print(f"seed {seed}: stopped after steps {stops}")
    a, b = weights(straight["dir"]), weights(model_dir)
    assert a.keys() == b.keys()
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    print(f"max |weight difference| vs the uninterrupted run: {diff:.2e}")
    assert diff <= 1e-6, f"seed {seed}, stops {stops}"
    assert history_steps(model_dir) == list(range(1, STEPS + 1))


def test_guard_refuses_another_configuration_then_start_over(
    straight, data_dir, tmp_path
):
    import shutil

    model_dir = str(tmp_path / "run")
    shutil.copytree(straight["dir"], model_dir)
    before = tree_digest(model_dir)
    proc = train(model_dir, data_dir, "--preset", "slide_12", check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr
    assert "preset" in err and '"rec_fixed_skip"' in err and '"slide_12"' in err
    assert "--start_over" in err and "corrupt" not in err
    assert tree_digest(model_dir) == before  # config, model, checkpoints untouched

    proc = train(
        model_dir, data_dir, "--preset", "slide_12", "--start_over", "--steps", "2"
    )
    assert "Resuming" not in proc.stdout and "corrupt" not in proc.stderr
    (stamp,) = os.listdir(os.path.join(model_dir, "previous"))
    moved = os.path.join(model_dir, "previous", stamp)
    assert moved in proc.stdout
    kept = tree_digest(moved)
    for name in (
        "config.json",
        "model.keras",
        "checkpoints/ckpt-00000012/model.weights.h5",
    ):
        assert kept[name] == before[name], name
    with open(os.path.join(model_dir, "config.json")) as f:
        assert json.load(f)["preset"] == "slide_12"


def test_two_jax_processes_stop_after_the_same_step(data_dir, tmp_path):
    """SIGTERM to one process of a two-process JAX run: both stop after the
    same step (the other would otherwise wait in the next step's
    collectives), checkpoint it and exit with 75."""
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
            *ARGS,
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
    # One shared run directory: process 0 writes the history, Orbax the
    # checkpoints (ckpt_<step>, each process its shards).
    wait_for(lambda: len(history_steps(model_dir)) >= 2, procs[0])
    os.kill(procs[1].pid, signal.SIGTERM)
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == preemption.EXIT_STATUS, out[-2000:] + err[-3000:]
    stop = len(history_steps(model_dir))
    assert 1 <= stop < STEPS, stop  # (>= 2 unless the wait timed out)
    assert os.path.isdir(os.path.join(model_dir, "checkpoints", f"ckpt_{stop:08d}"))
    assert f"received: stopped after step {stop}" in outs[0][0]
    assert f"SIGTERM received: stopped after step {stop}" in outs[1][0]
