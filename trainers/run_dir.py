"""The configuration guard of a run directory.

A run directory remembers its configuration in ``config.json``. A re-run
whose model, tokenizer, data, optimisation or batch settings differ is
refused (exit status 2) with every differing setting and both values, so an
earlier run is never continued with, or overwritten by, another
configuration. Settings in ``RESUMABLE`` may change on resume (more steps,
another checkpoint cadence, logging), and so may those in ``TOPOLOGY`` (how
the same global batch is split over devices and hosts).

``--start_over`` moves the earlier run's files (config, checkpoints, logs,
exports) into ``<model_dir>/previous/<UTC time>/`` and trains from step 0;
nothing is deleted.
"""

from __future__ import annotations

import json
import time

from trainers import paths
from trainers.common import UsageError

CONFIG = "config.json"
PREVIOUS = "previous"
# May differ between the runs of one directory.
RESUMABLE = frozenset(
    {
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "chunk_steps",
        "verbose",
        "save_plot",
        "data_dir",  # where the corpus lives; corpus, split and tokenizer are guarded
        "loss",  # a description
        "overrides",  # their effect is in "model"; only their spelling may differ
    }
)
TOPOLOGY = frozenset(
    {
        "strategy",
        "num_replicas",
        "num_processes",
        "host_batch",
        "state_batch",
        "mesh",
        "cpu_devices",
    }
)
# Files of a run that never belong to a configuration.
_NOT_MOVED = (PREVIOUS, "train.lock")


class ConfigMismatch(UsageError):
    """A run directory holds a run of another configuration."""


def _flatten(config, prefix=""):
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def guarded(config):
    """The settings that identify a run: `config` (as written to
    config.json) less the resumable and topology ones, flattened to
    ``{"model.num_layers": 4, ...}`` with JSON values (lists, not tuples)."""
    config = json.loads(json.dumps(config, sort_keys=True, default=str))
    skip = RESUMABLE | TOPOLOGY
    return _flatten({k: v for k, v in config.items() if k not in skip})


def differences(earlier, current):
    """[(setting, earlier value, current value)] of the guarded settings that
    differ. Settings missing on either side (written by another version of
    the trainer) are not compared."""
    a, b = guarded(earlier), guarded(current)
    return [(k, a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]


def describe(diffs, earlier_label="earlier run", current_label="this command"):
    width = max(len(k) for k, _, _ in diffs)
    return "\n".join(
        f"  {k:<{width}}  {earlier_label}: {json.dumps(a)}  {current_label}: {json.dumps(b)}"
        for k, a, b in diffs
    )


def read_config(model_dir):
    path = paths.join(model_dir, CONFIG)
    if not paths.exists(path):
        return None
    return json.loads(paths.read_text(path))


def run_files(model_dir):
    """The earlier run's files and directories (names), sorted."""
    return sorted(n for n in paths.listdir(model_dir) if n not in _NOT_MOVED)


def _has_trained(model_dir):
    ckpts = paths.join(model_dir, "checkpoints")
    return paths.exists(paths.join(model_dir, "model.keras")) or bool(
        paths.listdir(ckpts)
    )


def start_over(model_dir, log=print):
    """Moves every file of the earlier run into previous/<UTC time>/ and
    returns that directory (None when there was nothing to move)."""
    names = run_files(model_dir)
    if not names:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = paths.join(model_dir, PREVIOUS, stamp)
    i = 1
    while paths.exists(dest):
        dest = paths.join(model_dir, PREVIOUS, f"{stamp}-{i}")
        i += 1
    paths.makedirs(dest)
    for name in names:
        paths.move(paths.join(model_dir, name), paths.join(dest, name))
    log(
        f"--start_over: training from step 0; the earlier run in {model_dir} is not "
        f"continued. Its files ({', '.join(names)}) were moved, not deleted, to {dest}."
    )
    return dest


def check(model_dir, config, start_over_requested=False, log=print):
    """The guard. Raises `ConfigMismatch` when `model_dir` holds a trained run
    of another configuration; with `start_over_requested` moves the earlier
    run aside instead. Writes nothing otherwise. Call before writing
    config.json."""
    if start_over_requested:
        start_over(model_dir, log)
        return
    earlier = read_config(model_dir)
    if earlier is None:
        if paths.listdir(paths.join(model_dir, "checkpoints")):
            log(
                f"note: {model_dir} has checkpoints but no {CONFIG}; each checkpoint's "
                "recorded configuration is checked when it is restored."
            )
        return
    diffs = differences(earlier, config)
    if not diffs:
        for key in sorted(RESUMABLE | TOPOLOGY):
            a, b = earlier.get(key), config.get(key)
            if key in earlier and key in config and a != b and key != "loss":
                log(f"note: {key} changed from {a!r} to {b!r} (allowed on resume)")
        return
    if not _has_trained(model_dir):
        log(
            f"note: {model_dir} held the {CONFIG} of a run that never trained; "
            "replacing it:\n" + describe(diffs)
        )
        return
    raise ConfigMismatch(mismatch_message(model_dir, diffs))


def mismatch_message(model_dir, diffs, what=None):
    what = what or f"{paths.join(model_dir, CONFIG)}"
    return (
        f"{model_dir} holds a run of another configuration ({what}). "
        f"Differing settings:\n{describe(diffs)}\n"
        "Nothing was changed. To continue the earlier run, re-run with its settings "
        f"(see {paths.join(model_dir, CONFIG)}). To train this configuration, choose "
        "another --model_dir, or add --start_over: the earlier run is then not continued "
        f"and its files (checkpoints, config, logs, model.keras) are moved to "
        f"{paths.join(model_dir, PREVIOUS, '<UTC time>')}/, not deleted. "
        f"Settings that may change on resume: {', '.join(sorted(RESUMABLE - {'loss', 'overrides'}))}, "
        "and the distribution strategy / topology."
    )
