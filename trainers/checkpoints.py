"""Checkpoints: weights, optimizer, carried state, data position and step.

Layout: ``<dir>/ckpt-<step:08d>/`` holding ``model.weights.h5``,
``optimizer.npz``, ``stream_state.npz``, ``rng.npz`` (dropout seeds), ``data.*`` (the tf.data iterator,
``tf.train.Checkpoint``), ``pending.npz`` (batches already drawn from the
iterator but not trained on, after a preemption stopped a chunk early) and
``manifest.json`` (step, the run's guarded configuration, extra info and the
SHA-256 of every file). A checkpoint is written into a temporary directory
and renamed into place when complete, so a kill leaves either the old or the
new one.

On restore, a corrupt checkpoint (a file missing, failing its checksum or
failing to be read) is reported and the previous one is used. A checkpoint
of another configuration (its manifest's ``run_config`` differs in a guarded
setting, see `trainers.run_dir`) is not corrupt: restoring stops with
`trainers.run_dir.ConfigMismatch`, listing the differences, and the
checkpoint is left alone. A checkpoint that passes its checksum but does not
fit the model stops with `IncompatibleCheckpoint`. Rotation keeps the last
``keep`` checkpoints of this configuration and never deletes another's.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from trainers import paths
from trainers import run_dir
from trainers.common import UsageError

PREFIX = "ckpt-"
PENDING = "pending.npz"
Restored = collections.namedtuple("Restored", ["manifest", "state", "pending"])


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
    """A checkpoint file is missing, fails its checksum or cannot be read."""


class IncompatibleCheckpoint(UsageError):
    """A checkpoint that is intact but does not fit the model being trained."""


def _is_read_failure(e):
    return isinstance(
        e,
        (CorruptCheckpoint, OSError, tf.errors.DataLossError, tf.errors.NotFoundError),
    )


class CheckpointManager:
    """Saves, rotates and restores the checkpoints of one run.

    Args:
        directory: where the ``ckpt-<step>`` directories go.
        keep: how many of this configuration's checkpoints to keep.
        log: prints a warning (a corrupt checkpoint).
        run_config: the run's configuration (config.json's dict); its guarded
            settings are recorded in every manifest and checked on restore.
    """

    def __init__(self, directory, keep=3, log=None, run_config=None):
        self.directory = directory
        self.keep = keep
        self.log = log or (lambda msg: logging.warning("%s", msg))
        self.run_config = run_config
        paths.makedirs(directory)

    def checkpoints(self):
        """Complete checkpoint directories, newest first."""
        names = [
            n
            for n in paths.listdir(self.directory)
            if n.startswith(PREFIX) and n[len(PREFIX) :].isdigit()
        ]
        names.sort(key=lambda n: int(n[len(PREFIX) :]), reverse=True)
        return [paths.join(self.directory, n) for n in names]

    def _differences(self, manifest):
        recorded = manifest.get("run_config")
        if recorded is None or self.run_config is None:
            return []  # written before configurations were recorded
        return run_dir.differences(recorded, self.run_config)

    def _rotate(self):
        ours = []
        for path in self.checkpoints():
            try:
                manifest = json.loads(
                    paths.read_text(paths.join(path, "manifest.json"))
                )
            except (OSError, ValueError):
                ours.append(path)  # corrupt: rotated as before
                continue
            if not self._differences(manifest):
                ours.append(path)
        for old in ours[self.keep :]:
            paths.rmtree(old)

    def save(
        self,
        step,
        lm,
        optimizer,
        stream_state,
        iterator=None,
        extra=None,
        pending=None,
    ):
        """Writes ``ckpt-<step>``; `pending` ({name: [k, ...]} arrays) holds
        batches drawn from `iterator` but not yet trained on."""
        final = paths.join(self.directory, f"{PREFIX}{step:08d}")
        if paths.is_remote(self.directory):  # written locally, then uploaded
            tmp = tempfile.mkdtemp(prefix=f".tmp-{PREFIX}{step:08d}-")
        else:
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
        if pending:
            np.savez(os.path.join(tmp, PENDING), **pending)
        files = {
            os.path.relpath(p, tmp): _sha256(p)
            for p in sorted(glob.glob(os.path.join(tmp, "*")))
        }
        manifest = {"step": int(step), "files": files, "extra": extra or {}}
        if self.run_config is not None:
            manifest["run_config"] = run_dir.guarded(self.run_config)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        # Locally a rename; remotely a copy with the manifest last (a
        # directory without one is incomplete: corrupt, skipped on restore).
        paths.replace_dir(tmp, final)
        self._rotate()
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
        """Loads the newest good checkpoint; returns ``Restored(manifest,
        stream_state, pending)``, all None when there is none. Raises
        `run_dir.ConfigMismatch` / `IncompatibleCheckpoint` (see the module
        docstring) rather than skip a checkpoint that is not corrupt."""
        for path in self.checkpoints():
            with contextlib.ExitStack() as stack:
                try:
                    local = stack.enter_context(paths.local_copy(path))
                except OSError as e:
                    self.log(
                        f"checkpoint {path} cannot be read ({e}); using the previous one"
                    )
                    continue
                try:
                    manifest = self._verify(local)
                except CorruptCheckpoint as e:
                    self.log(
                        f"checkpoint {path} is corrupt ({e}); using the previous one"
                    )
                    continue
                diffs = self._differences(manifest)
                if diffs:
                    raise run_dir.ConfigMismatch(
                        run_dir.mismatch_message(
                            paths.dirname(self.directory),
                            diffs,
                            what=f"checkpoint {path}",
                        )
                    )
                try:
                    state, pending = self._load(
                        local, lm, optimizer, iterator, trainable_variables
                    )
                except Exception as e:  # noqa: BLE001 - sorted into read failures and misfits
                    if not _is_read_failure(e):
                        raise IncompatibleCheckpoint(
                            f"checkpoint {path} is intact (it passes its checksums) but does not "
                            f"fit this model ({type(e).__name__}: {e}). It was written by another "
                            "configuration or version; nothing was changed. Use another "
                            "--model_dir, or --start_over to move the earlier run aside."
                        ) from e
                    self.log(
                        f"checkpoint {path} is corrupt: a file cannot be read "
                        f"({type(e).__name__}: {e}); using the previous one"
                    )
                    continue
                logging.info("restored %s (step %d)", path, manifest["step"])
                return Restored(manifest, state, pending)
        return Restored(None, None, None)

    def _load(self, path, lm, optimizer, iterator, trainable_variables):
        lm.load_weights(os.path.join(path, "model.weights.h5"))
        if optimizer is not None:
            opt = np.load(os.path.join(path, "optimizer.npz"))
            if len(opt.files):
                if not optimizer.built:
                    optimizer.build(trainable_variables)
                if len(opt.files) != len(optimizer.variables):
                    raise ValueError(
                        f"optimizer has {len(optimizer.variables)} variables, "
                        f"checkpoint {len(opt.files)}"
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
        pending = None
        if os.path.exists(os.path.join(path, PENDING)):
            pending = dict(np.load(os.path.join(path, PENDING)))
        return state, pending

    def load_weights_only(self, lm):
        for path in self.checkpoints():
            try:
                with paths.local_copy(path) as local:
                    self._verify(local)
                    lm.load_weights(os.path.join(local, "model.weights.h5"))
                return path
            except Exception as e:  # noqa: BLE001 - read failures fall back
                if not _is_read_failure(e):
                    raise
                self.log(f"checkpoint {path} is corrupt ({e}); using the previous one")
        return None
