"""trainers.paths on a local directory, a GCS emulator (gs://, through gcsfs)
and TensorFlow's ram:// file system (through tf.io.gfile)."""

import os
import uuid

import pytest

from trainers import gcs_emulator
from trainers import paths


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.running(bucket="pathtest") as env:
        yield env


@pytest.fixture(params=["local", "gs", "ram"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    if request.param == "gs":
        request.getfixturevalue("gcs")
        return f"gs://pathtest/{uuid.uuid4().hex}/run"
    return f"ram://{uuid.uuid4().hex}/run"


def test_files_and_directories(root):
    assert not paths.exists(root) and paths.listdir(root) == []
    paths.makedirs(paths.join(root, "sub"))
    paths.write_text(paths.join(root, "config.json"), '{"a": 1}')
    paths.append_text(paths.join(root, "history.jsonl"), "1\n")
    paths.append_text(paths.join(root, "history.jsonl"), "2\n")
    with paths.open(paths.join(root, "sub", "w.bin"), "wb") as f:
        f.write(b"\x00\x01" * 10)
    assert paths.read_text(paths.join(root, "config.json")) == '{"a": 1}'
    assert paths.read_text(paths.join(root, "history.jsonl")) == "1\n2\n"
    assert "config.json" in paths.listdir(root) and "sub" in paths.listdir(root)
    assert paths.isdir(paths.join(root, "sub"))
    assert not paths.isdir(paths.join(root, "config.json"))
    assert paths.walk_files(root) == ["config.json", "history.jsonl", "sub/w.bin"]
    assert paths.size(root) == 8 + 4 + 20
    paths.remove(paths.join(root, "config.json"))
    assert not paths.exists(paths.join(root, "config.json"))
    paths.rmtree(root)
    assert not paths.exists(paths.join(root, "sub", "w.bin"))


def test_staged_dir_local_copy_and_replace(root, tmp_path):
    target = paths.join(root, "ckpt")
    with paths.staged_dir(target, last="manifest.json") as d:
        os.makedirs(os.path.join(d, "data"))
        for name in ("manifest.json", "a.npz", "data/x"):
            with open(os.path.join(d, name), "w") as f:
                f.write(name)
    assert paths.walk_files(target) == ["a.npz", "data/x", "manifest.json"]
    with paths.local_copy(target) as local:
        assert os.path.isdir(local)
        assert open(os.path.join(local, "data", "x")).read() == "data/x"
    moved = paths.join(root, "ckpt2")
    paths.replace_dir(target, moved)
    assert not paths.exists(paths.join(target, "a.npz"))
    assert paths.read_text(paths.join(moved, "data", "x")) == "data/x"


def test_url_helpers():
    assert paths.is_remote("gs://b/run") and paths.is_remote("ram://x")
    assert not paths.is_remote("/tmp/run") and not paths.is_remote("file:///tmp/run")
    assert paths.join("gs://b/run", "checkpoints", "c") == "gs://b/run/checkpoints/c"
    assert paths.basename("gs://b/run/ckpt-1/") == "ckpt-1"
    assert paths.dirname("gs://b/run/ckpt-1") == "gs://b/run"


def test_create_exclusive_creates_once(root):
    paths.makedirs(root)
    lock = paths.join(root, "train.lock")
    assert paths.create_exclusive(lock, "first")
    assert paths.read_text(lock) == "first"
    if root.startswith("gs://"):
        # The emulator ignores GCS preconditions (real GCS answers 412, which
        # gcsfs raises as FileExistsError: see the memory:// case below).
        return
    assert not paths.create_exclusive(lock, "second")
    assert paths.read_text(lock) == "first"


def test_create_exclusive_uses_the_stores_create_only_write():
    """fsspec's create-only write (gcsfs: ifGenerationMatch=0) decides, not a
    check-then-write: the lock of a second trainer on an object store fails."""
    from trainers import run_lock

    run = f"memory://{uuid.uuid4().hex}/run"
    first = run_lock.RunLock(run).acquire()
    with pytest.raises(run_lock.LockHeld, match="in use by another trainer"):
        run_lock.RunLock(run).acquire()
    first.release()
    run_lock.RunLock(run).acquire().release()


def test_remote_lock_taken_between_check_and_write_is_not_overwritten(monkeypatch):
    """Another host creates the lock just after this trainer looked (its
    first read finds nothing): the create-only write refuses, and the trainer
    names the holder instead of overwriting its lock."""
    import json

    from trainers import run_lock

    run = f"memory://{uuid.uuid4().hex}/run"
    other = {"host": "other-host", "pid": 4242, "started": "now", "command": "x"}
    paths.write_text(paths.join(run, run_lock.LOCK_NAME), json.dumps(other))
    lock = run_lock.RunLock(run)
    real_read, first = lock._read, [True]

    def racing_read():
        if first[0]:
            first[0] = False
            return None
        return real_read()

    monkeypatch.setattr(lock, "_read", racing_read)
    with pytest.raises(run_lock.LockHeld, match="other-host"):
        lock.acquire()
    assert json.loads(paths.read_text(paths.join(run, run_lock.LOCK_NAME))) == other
