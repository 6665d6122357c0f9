"""Checkpoints: weights, optimizer, carried state, data position and step.

Layout: ``<dir>/ckpt-<step:08d>/`` holding ``model.weights.h5``,
``optimizer.npz``, ``stream_state.npz``, ``rng.npz`` (dropout seeds), ``data.*`` (the tf.data iterator,
``tf.train.Checkpoint``) and ``manifest.json`` (step, extra info and the
SHA-256 of every file). A checkpoint is written into a temporary directory
and renamed into place when complete, so a kill leaves either the old or the
new one. On restore, a checkpoint whose files are missing, fail their
checksum or fail to load is reported and the previous one is used. The last
``keep`` checkpoints are kept.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging

PREFIX = "ckpt-"


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rng_variables(lm):
    """Variables that are not weights: the dropout seed generators' states."""
    weights = {id(v) for v in lm.weights}
    return [v for v in lm.variables if id(v) not in weights]


class CorruptCheckpoint(RuntimeError):
    pass


class CheckpointManager:
    def __init__(self, directory, keep=3, log=None):
        self.directory = directory
        self.keep = keep
        self.log = log or (lambda msg: logging.warning("%s", msg))
        os.makedirs(directory, exist_ok=True)

    def checkpoints(self):
        """Complete checkpoint directories, newest first."""
        paths = [
            p
            for p in glob.glob(os.path.join(self.directory, PREFIX + "*"))
            if os.path.basename(p)[len(PREFIX) :].isdigit()
        ]
        return sorted(
            paths, key=lambda p: int(os.path.basename(p)[len(PREFIX) :]), reverse=True
        )

    def save(self, step, lm, optimizer, stream_state, iterator=None, extra=None):
        final = os.path.join(self.directory, f"{PREFIX}{step:08d}")
        tmp = os.path.join(self.directory, f".tmp-{PREFIX}{step:08d}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        lm.save_weights(os.path.join(tmp, "model.weights.h5"))
        opt_values = {}
        if optimizer is not None and optimizer.built:
            for i, v in enumerate(optimizer.variables):
                opt_values[f"{i:05d}"] = np.asarray(keras.ops.convert_to_numpy(v.value))
        np.savez(os.path.join(tmp, "optimizer.npz"), **opt_values)
        np.savez(os.path.join(tmp, "stream_state.npz"), **(stream_state or {}))
        np.savez(
            os.path.join(tmp, "rng.npz"),
            **{
                f"{i:05d}": np.asarray(keras.ops.convert_to_numpy(v.value))
                for i, v in enumerate(_rng_variables(lm))
            },
        )
        if iterator is not None:
            tf.train.Checkpoint(iterator=iterator).write(os.path.join(tmp, "data"))
        files = {
            os.path.relpath(p, tmp): _sha256(p)
            for p in sorted(glob.glob(os.path.join(tmp, "*")))
        }
        manifest = {"step": int(step), "files": files, "extra": extra or {}}
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.checkpoints()[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _verify(self, path):
        mpath = os.path.join(path, "manifest.json")
        try:
            with open(mpath) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise CorruptCheckpoint(f"unreadable manifest ({e})") from e
        for name, digest in manifest["files"].items():
            fpath = os.path.join(path, name)
            if not os.path.exists(fpath):
                raise CorruptCheckpoint(f"{name} is missing")
            if _sha256(fpath) != digest:
                raise CorruptCheckpoint(f"{name} fails its SHA-256 check")
        return manifest

    def restore(self, lm, optimizer, iterator=None, trainable_variables=None):
        """Loads the newest good checkpoint; returns (manifest, stream_state)
        or (None, None) when there is none."""
        for path in self.checkpoints():
            try:
                manifest = self._verify(path)
                lm.load_weights(os.path.join(path, "model.weights.h5"))
                if optimizer is not None:
                    opt = np.load(os.path.join(path, "optimizer.npz"))
                    if len(opt.files):
                        if not optimizer.built:
                            optimizer.build(trainable_variables)
                        if len(opt.files) != len(optimizer.variables):
                            raise CorruptCheckpoint(
                                f"optimizer has {len(optimizer.variables)} variables, checkpoint {len(opt.files)}"
                            )
                        for i, v in enumerate(optimizer.variables):
                            v.assign(opt[f"{i:05d}"])
                state = dict(np.load(os.path.join(path, "stream_state.npz")))
                rng = np.load(os.path.join(path, "rng.npz"))
                for i, v in enumerate(_rng_variables(lm)):
                    v.assign(rng[f"{i:05d}"])
                if iterator is not None:
                    tf.train.Checkpoint(iterator=iterator).read(
                        os.path.join(path, "data")
                    ).assert_consumed()
                logging.info("restored %s (step %d)", path, manifest["step"])
                return manifest, state
            except Exception as e:  # noqa: BLE001 - any failure: report and fall back
                self.log(
                    f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e}); "
                    "using the previous one"
                )
        return None, None

    def load_weights_only(self, lm):
        for path in self.checkpoints():
            try:
                self._verify(path)
                lm.load_weights(os.path.join(path, "model.weights.h5"))
                return path
            except Exception as e:  # noqa: BLE001
                self.log(
                    f"checkpoint {path} is corrupt or unreadable ({e}); using the previous one"
                )
        return None
