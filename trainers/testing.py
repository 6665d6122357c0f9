"""Helpers for the trainer tests: a small prepared corpus and subprocess runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "data", "books")


def make_fixture_corpus(root, pieces_per_book=12):
    """Builds the ``books`` TFDS corpus from the test fixtures (each fixture
    book cut into pieces, so every split gets documents); returns data_dir."""
    data_dir = os.path.join(root, "tfds")
    if os.path.isdir(os.path.join(data_dir, "books")):
        return data_dir
    raw = os.path.join(root, "raw")
    src = os.path.join(raw, "books", "fixtures")
    os.makedirs(os.path.join(src, "docs"), exist_ok=True)
    entries = []
    for name in sorted(os.listdir(FIXTURES)):
        with open(os.path.join(FIXTURES, name), "rb") as f:
            text = f.read()
        size = len(text) // pieces_per_book + 1
        for i in range(pieces_per_book):
            piece = text[i * size : (i + 1) * size]
            if not piece:
                continue
            fname = f"docs/{len(entries):05d}.txt"
            with open(os.path.join(src, fname), "wb") as f:
                f.write(piece)
            entries.append(
                {
                    "doc_id": f"fixtures/{name}/{i}",
                    "title": name,
                    "file": fname,
                    "num_bytes": len(piece),
                    "source_package": "tests/fixtures",
                    "license": "see tests/fixtures/data/LICENSES.md",
                }
            )
    with open(os.path.join(src, "manifest.json"), "w") as f:
        json.dump({"source": "fixtures", "corpus": "books", "documents": entries}, f)
    run_module(
        "data.build", ["--corpus", "books", "--raw_dir", raw, "--data_dir", data_dir]
    )
    return data_dir


def env_for(backend="tensorflow", extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["KERAS_BACKEND"] = backend
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("XLA_FLAGS", None)
    env.update(extra or {})
    return env


def run_module(module, args, backend="tensorflow", env=None, timeout=600, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env_for(backend, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode:
        raise AssertionError(
            f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def run_json_script(code, backend="jax", env=None, drop=()):
    """Runs ``python -c code`` in a fresh process of ``backend`` (on JAX: the
    CPU client) and returns the JSON object its last stdout line prints.
    ``drop``: environment variables (or prefixes ending in ``*``) removed."""
    full = env_for(backend, {"TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"})
    for name in drop:
        for key in [
            k
            for k in full
            if k == name or (name.endswith("*") and k.startswith(name[:-1]))
        ]:
            del full[key]
    full.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=full, capture_output=True, text=True
    )
    if proc.returncode:
        raise AssertionError(
            f"script failed ({proc.returncode}):\n{proc.stderr[-5000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_history(model_dir):
    with open(os.path.join(model_dir, "history.jsonl")) as f:
        return [json.loads(line) for line in f]
