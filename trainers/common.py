"""Shared pieces of the trainers: flags, resolved config, distribution, data.

Imported after ``trainers.backend.select`` has set KERAS_BACKEND.
"""

from __future__ import annotations

import ast
import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import flags
from absl import logging

from brt_keras.models import BlockRecurrentCausalLM
from brt_keras.models import presets
from brt_keras.models.block_recurrent_stream_model import BlockRecurrentStreamModel
from brt_keras.models.block_recurrent_stream_model import loss_weights
from brt_keras.models.block_recurrent_stream_model import shift_targets
from brt_keras.models.optimizers import PaperAdafactor
from brt_keras.models.optimizers import RsqrtWarmup
from brt_keras.models.optimizers import WarmupCosine

FLAGS = flags.FLAGS
STRATEGIES = ("default", "mirrored", "tpu", "jax_data_parallel", "jax_model_parallel")


class UsageError(ValueError):
    """A flag problem; the message says what to change."""


def define_common_flags():
    flags.DEFINE_enum(
        "backend",
        None,
        ["tensorflow", "jax"],
        "Keras backend (read before Keras loads).",
    )
    flags.DEFINE_string(
        "model_dir", None, "Directory for config, checkpoints, logs, exports."
    )
    flags.DEFINE_integer(
        "cpu_devices", 1, "Split the CPU into this many devices (testing distribution)."
    )
    flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the corpus.")
    flags.DEFINE_string("tokenizer", None, "'bytes' or a SentencePiece .model path.")
    flags.DEFINE_integer("seed", 0, "Random seed (weights, data order).")


def define_train_flags():
    define_common_flags()
    flags.DEFINE_string(
        "preset", "rec_fixed_skip", f"Variant: {', '.join(presets.VARIANTS)}."
    )
    flags.DEFINE_string("size", "mini", f"Size: {', '.join(presets.SIZES)}.")
    flags.DEFINE_string(
        "corpus",
        "books",
        "books|papers|code, a name built by data.build --corpus text, or a TFDS name (pg19, ...).",
    )
    flags.DEFINE_string(
        "text_feature", None, "Text feature of a catalog TFDS data set."
    )
    flags.DEFINE_string("split", "train", "Training split (TFDS slicing allowed).")
    flags.DEFINE_integer(
        "steps", 1000, "Training steps in total (resumed runs continue to it)."
    )
    flags.DEFINE_integer(
        "batch_size", 8, "Global batch size (slots), split over replicas and hosts."
    )
    flags.DEFINE_integer(
        "segment_length", None, "Training segment L (default: the preset's)."
    )
    flags.DEFINE_enum("optimizer", "adafactor", ["adafactor", "adamw"], "Optimizer.")
    flags.DEFINE_enum(
        "schedule", "rsqrt", ["rsqrt", "cosine", "constant"], "Learning-rate schedule."
    )
    flags.DEFINE_float(
        "learning_rate",
        None,
        "rsqrt: multiplier of 1/sqrt(step) (default 1.0, the paper); cosine: peak "
        "(default 0.01); constant: the rate (default 1e-3); adamw default peak 1e-3.",
    )
    flags.DEFINE_integer("warmup_steps", 1000, "Linear warmup steps.")
    flags.DEFINE_float("weight_decay", 0.0, "AdamW weight decay.")
    flags.DEFINE_bool(
        "mixed_precision", False, "mixed_bfloat16 (the recurrent state stays float32)."
    )
    flags.DEFINE_enum("strategy", "default", list(STRATEGIES), "Distribution strategy.")
    flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu.")
    flags.DEFINE_string(
        "mesh", None, "jax_model_parallel mesh 'data,model' (default: 1,all devices)."
    )
    flags.DEFINE_string(
        "coordinator_address", None, "JAX multi-host: host:port of process 0."
    )
    flags.DEFINE_integer("num_processes", 1, "JAX multi-host: number of processes.")
    flags.DEFINE_integer("process_id", 0, "JAX multi-host: this process.")
    flags.DEFINE_multi_string("override", [], "Model config key=value (repeatable).")
    flags.DEFINE_integer("checkpoint_every", 100, "Checkpoint every N steps.")
    flags.DEFINE_integer("keep_checkpoints", 3, "Keep the last k checkpoints.")
    flags.DEFINE_integer("chunk_steps", 200, "At most this many steps per fit() call.")
    flags.DEFINE_integer(
        "verbose",
        1,
        "Progress: 0 none, 1 one line updated in place (every 5% when not a "
        "terminal), 2 one line per chunk.",
    )
    flags.DEFINE_bool("save_plot", True, "Write loss_curve.png at the end.")


def parse_override(text):
    if "=" not in text:
        raise UsageError(
            f"--override {text!r}: write key=value, e.g. --override dropout=0.0"
        )
    key, value = text.split("=", 1)
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    if isinstance(value, list):
        value = tuple(value)
    return key.strip(), value


def resolve_model_config(preset, size, overrides, segment_length=None):
    """Backbone config + segment_length, with errors that name the fix."""
    if preset not in presets.VARIANTS:
        raise UsageError(
            f"--preset={preset!r} is unknown; choose one of: {', '.join(presets.VARIANTS)}."
        )
    if size not in presets.SIZES:
        raise UsageError(
            f"--size={size!r} is unknown; choose one of: {', '.join(presets.SIZES)}."
        )
    over = dict(parse_override(o) for o in overrides)
    if segment_length:
        over["segment_length"] = segment_length
    try:
        config = presets.preset_config(preset, size, **over)
    except ValueError as e:
        raise UsageError(f"--override: {e}") from e
    if config["segment_length"] % config["block_size"]:
        w = config["block_size"]
        raise UsageError(
            f"--segment_length={config['segment_length']} is not a multiple of the block size "
            f"{w} of {preset}/{size}; use a multiple of {w}, e.g. "
            f"{max(w, config['segment_length'] // w * w)}."
        )
    return config


def build_lm(model_config, seed):
    config = dict(model_config)
    segment = config.pop("segment_length")
    from brt_keras.models.block_recurrent_backbone import BlockRecurrentBackbone

    keras.utils.set_random_seed(seed)
    return BlockRecurrentCausalLM(
        BlockRecurrentBackbone(**config), segment_length=segment
    )


def make_optimizer(
    name, schedule, learning_rate, warmup_steps, steps, weight_decay=0.0
):
    if schedule == "rsqrt":
        lr = RsqrtWarmup(
            base=1.0 if learning_rate is None else learning_rate,
            warmup_steps=warmup_steps,
        )
    elif schedule == "cosine":
        peak = learning_rate or (0.01 if name == "adafactor" else 1e-3)
        lr = WarmupCosine(peak=peak, total_steps=steps, warmup_steps=warmup_steps)
    else:
        lr = learning_rate or 1e-3
    if name == "adafactor":
        return PaperAdafactor(learning_rate=lr)
    if schedule == "rsqrt" and learning_rate is None:
        # 1/sqrt(step) peaks at 0.03: too large for AdamW; scale to 1e-3 at the peak.
        lr = RsqrtWarmup(base=1e-3 * np.sqrt(warmup_steps), warmup_steps=warmup_steps)
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)


def training_loss():
    # Mean over all B*L positions of the masked NLL: the reference's token sum
    # divided by a constant (the same on every replica), so gradients match
    # the sum loss up to scale and replicas' means average to the global one.
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, name="nll")


def to_model_inputs(batch):
    """A pipeline batch -> (x, targets, loss weights) for the stream model."""
    ids = batch["token_ids"]
    targets = tf.pad(ids[:, 1:], [[0, 0], [0, 1]])
    weights = tf.cast(tf.logical_and(ids > 0, targets > 0), tf.float32)
    # int32, not bool: MirroredStrategy cannot split bool tensors over replicas.
    x = {
        "token_ids": ids,
        "start_of_sequence": tf.cast(batch["start_of_sequence"], tf.int32),
    }
    return x, targets, weights


# Kept for callers that work on numpy / keras tensors.
__all__ = ["shift_targets", "loss_weights"]


def open_dataset(
    corpus,
    split,
    *,
    segment_length,
    batch_size,
    tokenizer,
    data_dir,
    seed,
    shard_index=0,
    num_shards=1,
    repeat=True,
    text_feature=None,
    documents=None,
):
    import data

    try:
        return data.long_document_dataset(
            corpus,
            split,
            segment_length=segment_length,
            batch_size=batch_size,
            tokenizer=tokenizer or "bytes",
            data_dir=data_dir,
            seed=seed,
            shard_index=shard_index,
            num_shards=num_shards,
            repeat=repeat,
            text_feature=text_feature,
            documents=documents,
        )
    except data.DatasetNotPreparedError as e:
        raise UsageError(str(e)) from e


def tokenizer_vocabulary(tokenizer):
    import data

    return data.get_tokenizer(tokenizer or "bytes").vocabulary_size


def write_json(path, obj):
    """Writes JSON to a local path or URL (see `trainers.paths`)."""
    from trainers import paths

    paths.write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_config(model_dir):
    from trainers import paths

    path = paths.join(model_dir, "config.json")
    if not paths.exists(path):
        raise UsageError(
            f"{path} not found: --model_dir must be a directory written by trainers.train."
        )
    return json.loads(paths.read_text(path))


def save_keras(lm, path):
    """``lm.save(path)`` for a local path or URL (Keras writes a local file
    that is then uploaded)."""
    from trainers import paths

    if not paths.is_remote(path):
        lm.save(path)
        return
    with paths.staged_dir(paths.dirname(path)) as local:
        lm.save(os.path.join(local, paths.basename(path)))


def load_lm(model_dir):
    """The trained LM: model.keras when present, else the newest checkpoint
    (Orbax checkpoints of a JAX run, or the TensorFlow backend's format)."""
    from trainers import paths

    path = paths.join(model_dir, "model.keras")
    if paths.exists(path):
        with paths.local_copy(path) as local:
            return keras.saving.load_model(local)
    config = read_config(model_dir)
    lm = build_lm(config["model"], config.get("seed", 0))
    ckpts = paths.join(model_dir, "checkpoints")
    if any(n.startswith("ckpt_") for n in paths.listdir(ckpts)):  # Orbax (JAX runs)
        from trainers import orbax_checkpoints

        manager = orbax_checkpoints.CheckpointManager(ckpts)
    else:
        from trainers.checkpoints import CheckpointManager

        manager = CheckpointManager(ckpts)
    if not manager.load_weights_only(lm):
        raise UsageError(
            f"no model.keras and no readable checkpoint in {model_dir}; train first."
        )
    return lm


# === Distribution ===


class Setup:
    """What the distribution choice means for building and feeding the model."""

    def __init__(self, strategy=None, num_replicas=1, process_index=0, process_count=1):
        self.strategy = strategy  # a tf.distribute strategy, or None
        self.num_replicas = num_replicas  # devices the global batch is split over
        self.process_index = process_index
        self.process_count = process_count

    def scope(self):
        if self.strategy is not None:
            return self.strategy.scope()
        import contextlib

        return contextlib.nullcontext()


def setup_distribution(
    strategy,
    backend,
    *,
    cpu_devices=1,
    tpu=None,
    mesh=None,
    coordinator_address=None,
    num_processes=1,
    process_id=0,
):
    if strategy in ("mirrored", "tpu") and backend != "tensorflow":
        raise UsageError(
            f"--strategy={strategy} needs --backend=tensorflow (or use jax_data_parallel with JAX)."
        )
    if strategy.startswith("jax_") and backend != "jax":
        raise UsageError(f"--strategy={strategy} needs --backend=jax.")
    if num_processes > 1 and backend != "jax":
        raise UsageError(
            "several processes (--num_processes) need --backend=jax and a jax_* strategy."
        )
    if strategy == "default":
        if num_processes > 1:
            raise UsageError(
                "--num_processes > 1 needs --strategy=jax_data_parallel or jax_model_parallel."
            )
        return Setup()
    if strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            devices = [d.name for d in gpus]
        else:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        s = tf.distribute.MirroredStrategy(devices)
        logging.info("MirroredStrategy over %s", devices)
        return Setup(s, s.num_replicas_in_sync)
    if strategy == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            s = tf.distribute.TPUStrategy(resolver)
        except Exception as e:  # noqa: BLE001 - any failure means no usable TPU
            raise UsageError(
                f"--strategy=tpu: no TPU found ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                "TensorFlow >= 2.20 no longer supports TPUs; on a TPU VM or Colab use "
                "--backend=jax --strategy=jax_data_parallel (see notebooks/brt_colab_tpu.ipynb)."
            ) from e
        return Setup(s, s.num_replicas_in_sync)
    # JAX keras.distribution
    if num_processes > 1:
        import jax

        if coordinator_address is None:
            raise UsageError(
                "--num_processes > 1 needs --coordinator_address=host:port (process 0)."
            )
        try:  # CPU collectives between processes (tests, CPU clusters); must not touch devices yet
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except Exception:  # noqa: BLE001 - JAX versions that choose it themselves
            pass
        keras.distribution.initialize(coordinator_address, num_processes, process_id)
    devices = keras.distribution.list_devices()
    if strategy == "jax_data_parallel":
        dist = keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=False
        )
    else:
        shape = tuple(int(v) for v in mesh.split(",")) if mesh else (1, len(devices))
        if int(np.prod(shape)) != len(devices):
            raise UsageError(
                f"--mesh={mesh} has {int(np.prod(shape))} devices; there are {len(devices)}."
            )
        device_mesh = keras.distribution.DeviceMesh(shape, ["batch", "model"], devices)
        layout = keras.distribution.LayoutMap(device_mesh)
        layout[".*(queries|keys|values|queries2)_layer/kernel"] = (None, "model")
        layout[".*ffn_hidden0/kernel"] = (None, "model")
        layout[".*ffn_output_layer/kernel"] = ("model", None)
        layout[".*/(state_)?output_layer/kernel"] = ("model", None)
        dist = keras.distribution.ModelParallel(
            layout_map=layout, batch_dim_name="batch", auto_shard_dataset=False
        )
        shape_batch = shape[0]
        keras.distribution.set_distribution(dist)
        import jax

        return Setup(None, shape_batch, jax.process_index(), jax.process_count())
    keras.distribution.set_distribution(dist)
    import jax

    return Setup(None, len(devices), jax.process_index(), jax.process_count())


# === Stream state I/O (per replica under tf.distribute) ===


def _tf_components(variable):
    value = getattr(variable, "_value", None)
    if value is not None and hasattr(value, "_values"):
        return list(value._values)
    return None


def get_stream_state(model, training=True):
    """{name: numpy [global slots, ...]} of the train (or eval) cache."""
    variables, fresh = model.stream_variables(training)
    out = {}
    for v in list(variables) + [fresh]:
        parts = _tf_components(v)
        if parts is not None:
            out[v.name] = np.concatenate([p.numpy() for p in parts], axis=0)
        else:
            value = v.value
            if (
                hasattr(value, "is_fully_addressable")
                and not value.is_fully_addressable
            ):
                value = value.addressable_data(0)
            out[v.name] = np.asarray(keras.ops.convert_to_numpy(value))
    return out


def set_stream_state(model, state, training=True):
    variables, fresh = model.stream_variables(training)
    for v in list(variables) + [fresh]:
        value = state[v.name]
        parts = _tf_components(v)
        if parts is not None:
            for part, chunk in zip(parts, np.split(value, len(parts), axis=0)):
                part.assign(chunk)
        else:
            v.assign(value)


def build_stream_model(lm, per_replica_batch):
    return BlockRecurrentStreamModel(lm, per_replica_batch)


def binary_main(job):
    """absl `main` for a trainer binary: runs `job()`; a `UsageError` (a bad
    flag) prints what to change and exits with status 2."""

    def main(argv):
        from absl import app

        logging.set_verbosity(logging.WARNING)
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            job()
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return main
