"""Distributed training on TensorFlow equals the single-device run (dropout
off, same global batch): MirroredStrategy on 2 logical CPUs. Each run is a
fresh subprocess. The JAX routes (DataParallel, ModelParallel, two processes)
are in test_trainers_topology.py, where each run also resumes onto another
topology."""

import os

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
    ckpt = os.path.join(model_dir, "checkpoints", f"ckpt-{STEPS:08d}")
    state = np.load(os.path.join(ckpt, "stream_state.npz"))
    return losses, dict(state)


def _compare(name, single, multi):
    (l1, s1), (l2, s2) = single, multi
    loss_diff = float(np.max(np.abs(l1 - l2)))
    state_diff = 0.0
    for k in s1:
        a, b = s1[k], s2[k]
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


def _mirrored(data_dir, model_dir, *extra):
    return _run(
        data_dir,
        model_dir,
        "tensorflow",
        "--strategy",
        "mirrored",
        "--cpu_devices",
        "2",
        *extra,
    )


def test_mirrored_two_cpus(data_dir, tmp_path, tf_single):
    _compare("MirroredStrategy x2", tf_single, _mirrored(data_dir, str(tmp_path)))


def test_mirrored_two_cpus_chunked_loss(data_dir, tmp_path, tf_single):
    """The trainer with `loss_chunk_tokens` (no logits in the step) on two
    replicas gives the single-device full-logits run: same loss, same
    per-replica scaling of the gradient, same carried state."""
    multi = _mirrored(data_dir, str(tmp_path), "--override", "loss_chunk_tokens=24")
    _compare("MirroredStrategy x2, loss_chunk_tokens=24", tf_single, multi)
