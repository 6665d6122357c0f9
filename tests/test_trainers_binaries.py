"""The trainer binaries end to end on a tiny model (TF backend, subprocesses)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from trainers import testing

TINY = [
    "--size",
    "tiny",
    "--batch_size",
    "4",
    "--override",
    "dropout=0.0",
    "--verbose",
    "0",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return testing.make_fixture_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run"))
    testing.run_module(
        "trainers.train",
        [
            "--model_dir",
            model_dir,
            "--data_dir",
            data_dir,
            "--steps",
            "12",
            "--checkpoint_every",
            "6",
            "--warmup_steps",
            "5",
            *TINY,
        ],
    )
    return model_dir


def test_train_writes_everything(trained):
    for name in (
        "config.json",
        "model.keras",
        "loss_curve.png",
        "history.jsonl",
        "train_summary.json",
    ):
        assert os.path.exists(os.path.join(trained, name)), name
    assert os.listdir(os.path.join(trained, "tensorboard"))
    config = json.load(open(os.path.join(trained, "config.json")))
    assert config["model"]["dropout"] == 0.0 and config["segment_length"] == 32
    history = testing.read_history(trained)
    assert [r["step"] for r in history] == list(range(1, 13))
    ckpts = sorted(os.listdir(os.path.join(trained, "checkpoints")))
    assert ckpts == ["ckpt-00000006", "ckpt-00000012"]


def test_evaluate_json(trained):
    proc = testing.run_module(
        "trainers.evaluate", ["--model_dir", trained, "--batch_size", "2"]
    )
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert result["complete"] and result["tokens"] > 0
    for key in ("bits_per_token", "bits_per_byte", "word_perplexity"):
        assert np.isfinite(result[key]) and result[key] > 0
    # Byte tokens: bits per byte = bits per token * tokens / bytes.
    np.testing.assert_allclose(
        result["bits_per_byte"],
        result["bits_per_token"] * result["tokens"] / result["bytes"],
        rtol=1e-6,
    )


def test_export_loads_in_plain_tensorflow(trained):
    proc = testing.run_module("trainers.export", ["--model_dir", trained])
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert max(result["max_abs_diff_vs_keras"].values()) < 1e-4
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({result['saved_model']!r})\n"
        "ids = tf.constant(np.arange(1, 41, dtype='int32').reshape(1, 40))\n"
        "print(m.serve(ids).shape)\n"
        "s = m.initial_state(tf.constant(1))\n"
        "r = m.stream(ids[:, :32], s)\n"
        "print(r['logits'].shape)\n"
        "assert not any(k.startswith(('brt_keras', 'trainers')) for k in sys.modules)\n"
    )
    env = testing.env_for()
    env.pop("PYTHONPATH")  # brt_keras is not importable
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(1, 40, 260)" in out.stdout and "(1, 32, 260)" in out.stdout


def test_generate_streams_text(trained):
    proc = testing.run_module(
        "trainers.generate",
        [
            "--model_dir",
            trained,
            "--prompt",
            "Call me",
            "--max_new_tokens",
            "20",
            "--seed",
            "1",
        ],
    )
    assert proc.stdout.startswith("Call me") and len(proc.stdout) > len("Call me")


def test_make_preset_then_generate_from_it(trained, tmp_path):
    preset = str(tmp_path / "brt_test_preset")
    testing.run_module(
        "trainers.make_preset", ["--model_dir", trained, "--preset_dir", preset]
    )
    for name in ("config.json", "task.json", "tokenizer.json", "model.weights.h5"):
        assert os.path.exists(os.path.join(preset, name)), name
    assert "trainers.train" in open(os.path.join(preset, "README.md")).read()
    proc = testing.run_module(
        "trainers.generate",
        ["--preset", preset, "--prompt", "Call me", "--max_new_tokens", "8"],
    )
    assert proc.stdout.startswith("Call me") and len(proc.stdout) > len("Call me")
    # An existing preset is never replaced without --overwrite.
    again = testing.run_module(
        "trainers.make_preset",
        ["--model_dir", trained, "--preset_dir", preset],
        check=False,
    )
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert os.path.exists(os.path.join(preset, "model.weights.h5"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "nope"], "--preset='nope' is unknown"),
        (["--segment_length", "36"], "not a multiple of the block size 8"),
        (
            ["--strategy", "mirrored", "--cpu_devices", "2", "--batch_size", "3"],
            "not divisible by the 2 replicas",
        ),
        (["--corpus", "papers"], "python -m data.build"),
        (["--strategy", "tpu"], "no TPU found"),
        (["--override", "bogus=1"], "Unknown override"),
    ],
)
def test_flag_errors_say_what_to_change(data_dir, tmp_path, args, message):
    proc = testing.run_module(
        "trainers.train",
        [
            "--model_dir",
            str(tmp_path),
            "--data_dir",
            data_dir,
            "--steps",
            "1",
            "--size",
            "tiny",
            *args,
        ],
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]


def _final_weights(model_dir):
    import h5py

    path = os.path.join(model_dir, "checkpoints", "ckpt-00000030", "model.weights.h5")
    arrays = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda n, o: arrays.append((n, o[()])) if hasattr(o, "shape") else None
        )
    return dict(arrays)


@pytest.mark.slow
def test_kill_resume_corrupt_checkpoint(data_dir, tmp_path):
    """kill -9 mid-run, re-run: same final weights as an uninterrupted run.
    Then a corrupt newest checkpoint is reported and the previous one used."""
    args = [
        "--data_dir",
        data_dir,
        "--steps",
        "30",
        "--checkpoint_every",
        "10",
        "--chunk_steps",
        "5",
        "--warmup_steps",
        "5",
        "--size",
        "tiny",
        "--batch_size",
        "4",
        "--verbose",
        "0",
    ]
    straight = str(tmp_path / "straight")
    testing.run_module("trainers.train", ["--model_dir", straight, *args])
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainers.train", "--model_dir", killed, *args],
        cwd=testing.REPO,
        env=testing.env_for(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    hist = os.path.join(killed, "history.jsonl")
    # Kill after the step-10 checkpoint, in the middle of steps 11-20.
    while time.time() < deadline:
        if os.path.exists(
            os.path.join(killed, "checkpoints", "ckpt-00000010")
        ) and os.path.exists(hist):
            if sum(1 for _ in open(hist)) >= 12:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "checkpoints", "ckpt-00000030"))
    resumed = testing.run_module("trainers.train", ["--model_dir", killed, *args])
    assert "Resuming from step" in resumed.stdout
    a, b = _final_weights(straight), _final_weights(killed)
    assert a.keys() == b.keys()
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    print(f"resume max |weight difference| = {diff}")
    assert diff <= 1e-6
    losses = [r["loss"] for r in testing.read_history(killed)]
    np.testing.assert_allclose(
        losses, [r["loss"] for r in testing.read_history(straight)], rtol=1e-5
    )

    # Corrupt the newest checkpoint: reported, the previous one (step 20) used.
    newest = os.path.join(killed, "checkpoints", "ckpt-00000030", "model.weights.h5")
    with open(newest, "r+b") as f:
        f.seek(100)
        f.write(b"\0garbage\0")
    again = testing.run_module(
        "trainers.train", ["--model_dir", killed, *args, "--steps", "30"]
    )
    assert "ckpt-00000030 is corrupt" in again.stderr
    assert "Resuming from step 20" in again.stdout
