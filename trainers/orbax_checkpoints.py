"""Checkpoints through Orbax on the JAX backend: sharded, asynchronous,
multi-host, restorable onto another device topology.

Same interface as ``trainers.checkpoints.CheckpointManager`` (``save``,
``restore``, ``checkpoints``, ``load_weights_only``) plus
``wait_until_finished``. Layout under ``directory`` (local or ``gs://``)::

    ckpt_<step:08d>/       Orbax: items weights, optimizer, rng (dropout seed
                           states), stream (carried state) and meta (JSON)
    data/<step:08d>/shard-<k>-of-<n>/   the tf.data iterator of data shard k
                           (written by the process that reads it)

Each process writes the array shards it owns (``jax.Array`` shards, no gather
onto one host); ``save`` returns once the arrays are copied off the devices
and the files are written in the background. ``restore`` reads every array
straight into the sharding of the variable it is assigned to, so a run saved
on one mesh (4 devices, 2x2, two processes) resumes on another (2 devices,
4x1, one process). The data position is kept per data shard, not per
process: a run keeps its number of data shards (``DataShards``) and a process
reads ``num_shards / process_count`` of them, so the global batch stays the
same slots in the same order whatever the number of processes.
"""

from __future__ import annotations

import collections
import os
import sys

import jax
import keras
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from trainers import paths
from trainers import run_dir

Restored = collections.namedtuple("Restored", ["manifest", "state", "pending"])

PREFIX = "ckpt"
ARRAY_ITEMS = ("weights", "optimizer", "rng", "stream")


def _rng_variables(lm):
    """Variables that are not weights: the dropout seed generators' states."""
    weights = {id(v) for v in lm.weights}
    return [v for v in lm.variables if id(v) not in weights]


def _use_ocdbt():
    """Orbax's OCDBT format (its default: few large files) except on a GCS
    emulator, which cannot serve OCDBT's generation-conditional manifest
    writes; there each array is its own zarr store."""
    return not os.environ.get("STORAGE_EMULATOR_HOST")


def _keyed(values):
    return {f"{i:05d}": v for i, v in enumerate(values)}


def _abstract(variables):
    """Restore targets: each variable's shape, dtype and current sharding
    (numpy arrays off JAX: a TensorFlow-backend reader of a JAX run)."""
    if keras.backend.backend() != "jax":
        return _keyed([np.zeros(v.shape, v.dtype) for v in variables])
    return _keyed(
        [
            jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.value.sharding)
            for v in variables
        ]
    )


def _assign(variables, restored, what):
    if len(restored) != len(variables):
        raise ValueError(
            f"{what}: the checkpoint has {len(restored)} variables, the model {len(variables)}"
        )
    for key, v in zip(sorted(restored), variables):
        value = restored[key]
        if tuple(value.shape) != tuple(v.shape):
            raise ValueError(
                f"{what}: {v.path} has shape {tuple(v.shape)}, the checkpoint {tuple(value.shape)}"
            )
        v.assign(value)


class DataShards:
    """The data shards one process reads, as one iterator of host batches.

    A run's data is split into ``num_shards`` shards fixed for its lifetime
    (the number of processes it started with); process ``p`` of ``P`` reads
    shards ``p*k .. p*k+k-1`` (``k = num_shards / P``), each an iterator of
    ``global_batch / num_shards`` slots, and ``next`` concatenates them:
    process-major, the slot order of the run that started it.

    Args:
        make_dataset: ``(shard_index, num_shards, batch_size) -> tf.data.Dataset``.
        num_shards: data shards of the run.
        global_batch: slots over all processes.
    """

    def __init__(self, make_dataset, num_shards, global_batch):
        count, index = jax.process_count(), jax.process_index()
        if num_shards % count or global_batch % num_shards:
            raise ValueError(
                f"this run reads {num_shards} data shards (the processes it started with); "
                f"--num_processes={count} must divide it and it must divide "
                f"--batch_size={global_batch}"
            )
        per = num_shards // count
        self.num_shards = num_shards
        self.shards = list(range(index * per, (index + 1) * per))
        batch = global_batch // num_shards
        self.iterators = {
            k: iter(make_dataset(k, num_shards, batch)) for k in self.shards
        }

    def __iter__(self):
        return self

    def __next__(self):
        batches = [next(self.iterators[k]) for k in self.shards]
        if len(batches) == 1:
            return batches[0]
        return {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}

    def shard_name(self, k):
        return f"shard-{k:05d}-of-{self.num_shards:05d}"


def _shards_of(iterator):
    if iterator is None or isinstance(iterator, (DataShards, _SingleShard)):
        return iterator
    return _SingleShard(iterator, jax.process_index(), jax.process_count())


class CheckpointManager:
    """Orbax checkpoints of a BRT training run (see the module docstring).

    Args:
        directory: where the checkpoints go (local path or URL).
        keep: how many of the newest checkpoints to keep.
        log: ``msg -> None`` for warnings (a checkpoint that cannot be read).
        run_config: the run's configuration; its guarded settings are
            recorded in every checkpoint and checked on restore.
        asynchronous: write the array files in the background.
    """

    def __init__(self, directory, keep=3, log=None, run_config=None, asynchronous=True):
        self.directory = directory
        self.keep = keep
        self.log = log or (lambda m: print(f"WARNING: {m}", file=sys.stderr))
        self.run_config = run_config
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            step_prefix=PREFIX,
            step_format_fixed_length=8,
            enable_async_checkpointing=asynchronous,
            create=True,
        )
        handlers = {
            k: ocp.StandardCheckpointHandler(use_ocdbt=_use_ocdbt())
            for k in ARRAY_ITEMS
        }
        handlers["meta"] = ocp.JsonCheckpointHandler()
        self._manager = ocp.CheckpointManager(
            directory, options=options, item_handlers=handlers
        )

    def _step_path(self, step):
        return paths.join(self.directory, f"{PREFIX}_{step:08d}")

    def _data_path(self, step, name=None):
        path = paths.join(self.directory, "data", f"{step:08d}")
        return paths.join(path, name) if name else path

    def _steps(self):
        self._manager.reload()
        return sorted(self._manager.all_steps(), reverse=True)

    def checkpoints(self):
        """Finished checkpoint directories, newest first."""
        return [self._step_path(s) for s in self._steps()]

    def _meta(self, step):
        args = ocp.args.Composite(meta=ocp.args.JsonRestore())
        return self._manager.restore(step, args=args)["meta"]

    def latest_meta(self):
        """The JSON meta of the newest readable checkpoint (None when there is
        none): a run learns its number of data shards before opening the data."""
        for step in self._steps():
            try:
                return self._meta(step)
            except Exception as e:  # noqa: BLE001 - unreadable: the previous one
                self.log(f"checkpoint {self._step_path(step)}: unreadable meta ({e})")
        return None

    def _save_data(self, step, iterator, pending):
        """Each data shard's iterator and not-yet-trained batches, written by
        the process that reads it."""
        shards = _shards_of(iterator)
        if shards is None:
            return 0
        parts = {}
        if pending:  # {name: [k, host_batch, ...]}: the shards side by side
            split = {
                n: np.split(np.asarray(v), len(shards.shards), axis=1)
                for n, v in pending.items()
            }
            parts = {
                k: {n: split[n][i] for n in split} for i, k in enumerate(shards.shards)
            }
        for k in shards.shards:
            target = self._data_path(step, shards.shard_name(k))
            with paths.staged_dir(target, last="checkpoint") as local:
                if k in parts:
                    np.savez(os.path.join(local, "pending.npz"), **parts[k])
                tf.train.Checkpoint(iterator=shards.iterators[k]).write(
                    os.path.join(local, "data")
                )
        return shards.num_shards

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
        """Starts writing checkpoint ``step`` and returns its path; the arrays
        are written in the background (``wait_until_finished``). The data
        iterators and `pending` batches are written first (small)."""
        self._manager.wait_until_finished()
        num_shards = self._save_data(step, iterator, pending)
        opt = optimizer.variables if optimizer is not None and optimizer.built else []
        meta = {
            "step": int(step),
            "extra": extra or {},
            "num_data_shards": num_shards,
            "process_count": jax.process_count(),
            "devices": jax.device_count(),
        }
        if self.run_config is not None:
            meta["run_config"] = run_dir.guarded(self.run_config)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                weights=ocp.args.StandardSave(_keyed([v.value for v in lm.weights])),
                optimizer=ocp.args.StandardSave(_keyed([v.value for v in opt])),
                rng=ocp.args.StandardSave(
                    _keyed([v.value for v in _rng_variables(lm)])
                ),
                stream=ocp.args.StandardSave(
                    {k: np.asarray(v) for k, v in (stream_state or {}).items()}
                ),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self._prune_data()
        return self._step_path(step)

    def _prune_data(self):
        """Drops the data files of checkpoints Orbax has rotated away."""
        if jax.process_index() != 0:
            return
        steps = self._manager.all_steps()
        if not steps:
            return
        for name in paths.listdir(paths.join(self.directory, "data")):
            if name.isdigit() and int(name) < min(steps):
                paths.rmtree(self._data_path(int(name)))

    def wait_until_finished(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()

    def _restore_data(self, step, iterator, meta):
        shards = _shards_of(iterator)
        if shards is None:
            return None
        if meta.get("num_data_shards") != shards.num_shards:
            raise ValueError(
                f"the checkpoint holds {meta.get('num_data_shards')} data shards, "
                f"this run reads {shards.num_shards}"
            )
        pending = []
        for k in shards.shards:
            with paths.local_copy(self._data_path(step, shards.shard_name(k))) as d:
                tf.train.Checkpoint(iterator=shards.iterators[k]).read(
                    os.path.join(d, "data")
                ).assert_consumed()
                if os.path.exists(os.path.join(d, "pending.npz")):
                    pending.append(dict(np.load(os.path.join(d, "pending.npz"))))
        if not pending:
            return None
        return {n: np.concatenate([p[n] for p in pending], axis=1) for n in pending[0]}

    def restore(self, lm, optimizer, iterator=None, trainable_variables=None):
        """Loads the newest good checkpoint into the model's variables (in
        their current shardings); returns ``Restored(meta, stream_state,
        pending)``, all None when there is none. A checkpoint of another
        configuration raises `run_dir.ConfigMismatch` (it is not skipped)."""
        self.wait_until_finished()
        if optimizer is not None and not optimizer.built:
            optimizer.build(trainable_variables)
        opt = list(optimizer.variables) if optimizer is not None else []
        for step in self._steps():
            path = self._step_path(step)
            try:
                meta = self._meta(step)
            except Exception as e:  # noqa: BLE001 - unreadable: the previous one
                self.log(f"checkpoint {path} is corrupt ({e}); using the previous one")
                continue
            recorded = meta.get("run_config")
            if recorded is not None and self.run_config is not None:
                diffs = run_dir.differences(recorded, self.run_config)
                if diffs:
                    raise run_dir.ConfigMismatch(
                        run_dir.mismatch_message(
                            paths.dirname(self.directory),
                            diffs,
                            what=f"checkpoint {path}",
                        )
                    )
            try:
                stream_meta = self._manager.item_metadata(step)["stream"] or {}
                out = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        weights=ocp.args.StandardRestore(_abstract(lm.weights)),
                        optimizer=ocp.args.StandardRestore(_abstract(opt)),
                        rng=ocp.args.StandardRestore(_abstract(_rng_variables(lm))),
                        stream=ocp.args.StandardRestore(
                            {
                                k: np.zeros(m.shape, m.dtype)
                                for k, m in stream_meta.items()
                            }
                        ),
                    ),
                )
                pending = self._restore_data(step, iterator, meta)
                _assign(lm.weights, out["weights"], "weights")
                _assign(opt, out["optimizer"] or {}, "optimizer")
                _assign(_rng_variables(lm), out["rng"] or {}, "dropout seeds")
            except Exception as e:  # noqa: BLE001 - any failure: report and fall back
                self.log(
                    f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e}); "
                    "using the previous one"
                )
                continue
            state = {k: np.asarray(v) for k, v in (out["stream"] or {}).items()}
            meta["path"] = path
            return Restored(meta, state, pending)
        return Restored(None, None, None)

    def load_weights_only(self, lm):
        for step in self._steps():
            path = self._step_path(step)
            try:
                out = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        weights=ocp.args.StandardRestore(_abstract(lm.weights))
                    ),
                )
                _assign(lm.weights, out["weights"], "weights")
                return path
            except Exception as e:  # noqa: BLE001
                self.log(
                    f"checkpoint {path} is corrupt or unreadable ({e}); using the previous one"
                )
        return None


class _SingleShard:
    """A plain iterator seen as the data shard of its process."""

    def __init__(self, iterator, index, count):
        self.num_shards = count
        self.shards = [index]
        self.iterators = {index: iterator}

    def shard_name(self, k):
        return f"shard-{k:05d}-of-{self.num_shards:05d}"


def is_orbax_dir(directory):
    """Whether ``directory`` holds Orbax checkpoints (``ckpt_<step>``)."""
    return any(n.startswith(PREFIX + "_") for n in paths.listdir(directory))


def read_arrays(directory, step, item):
    """``{key: numpy array}`` of one item (weights, optimizer, rng, stream)
    of checkpoint ``step``, without a model (tests and tools)."""
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            step_prefix=PREFIX, step_format_fixed_length=8, read_only=True
        ),
        item_handlers={item: ocp.StandardCheckpointHandler(use_ocdbt=_use_ocdbt())},
    )
    metadata = manager.item_metadata(step)[item]
    target = {k: np.zeros(m.shape, m.dtype) for k, m in metadata.items()}
    args = ocp.args.Composite(**{item: ocp.args.StandardRestore(target)})
    out = manager.restore(step, args=args)[item]
    manager.close()
    return {k: np.asarray(v) for k, v in out.items()}
