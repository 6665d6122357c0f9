"""Train a Block-Recurrent Transformer with carried state through ``model.fit``.

    python -m trainers.train --model_dir runs/mini --preset rec_fixed_skip --size mini \
        --corpus books --data_dir DATA_DIR --steps 1000 --batch_size 8 [--backend jax ...]

Each batch slot reads one document segment after segment; the stream state
of every slot is carried from step to step (reset where a document starts),
with no gradient across segments. Writes to ``--model_dir``: ``config.json``
(the resolved config), ``checkpoints/`` (every ``--checkpoint_every`` steps,
the last ``--keep_checkpoints``), ``tensorboard/``, ``history.jsonl``,
``loss_curve.png`` and ``model.keras``. Re-running the same command resumes
from the newest good checkpoint.

The run directory is guarded (`trainers.run_dir`): a re-run whose model,
tokenizer, data, optimisation or batch settings differ from its
``config.json`` exits with status 2 and lists the differences; ``--start_over``
moves the earlier run into ``previous/<UTC time>/`` instead. One trainer at a
time: ``train.lock`` (`trainers.run_lock`); a second trainer exits with
status 2 naming the holder. SIGTERM / SIGINT (`trainers.preemption`) finish
the current step, write a checkpoint and exit with status 75; re-running
resumes exactly there.
"""

from trainers import backend as _backend

_backend.select(main=__name__ == "__main__")

import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from trainers import common  # noqa: E402
from trainers import paths  # noqa: E402
from trainers import preemption  # noqa: E402
from trainers import run_dir  # noqa: E402
from trainers import run_lock  # noqa: E402
from trainers.checkpoints import CheckpointManager  # noqa: E402
from trainers.progress import Progress  # noqa: E402

FLAGS = flags.FLAGS
common.define_train_flags()
flags.DEFINE_bool(
    "start_over",
    False,
    "Train from step 0 even if --model_dir holds a run (of any configuration): "
    "its files are moved to <model_dir>/previous/<UTC time>/, not deleted.",
)
BATCH_KEYS = ("token_ids", "start_of_sequence")


class StepLogger(keras.callbacks.Callback):
    """Per-step loss (recovered from Keras' running mean) to history.jsonl
    and TensorBoard."""

    def __init__(self, history_path, writer, batch_tokens, progress=None):
        super().__init__()
        self.history_path = history_path
        self.writer = writer
        self.batch_tokens = batch_tokens
        self.progress = progress
        self.start_step = 0
        self.batches_done = 0  # in the current fit() call
        self.last = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._lines = []
        self._prev_mean = 0.0
        self._t0 = time.time()
        self.batches_done = 0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        loss = (batch + 1) * mean - batch * self._prev_mean
        self._prev_mean = mean
        step = self.start_step + batch + 1
        elapsed = time.time() - self._t0
        rec = {
            "step": step,
            "loss": loss,
            "tokens_per_second": self.batch_tokens * (batch + 1) / max(elapsed, 1e-9),
        }
        lr = self.model.optimizer.learning_rate
        rec["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        self.batches_done = batch + 1
        self.last = rec
        if self.progress is not None:
            self.progress.update(step, loss, rec["tokens_per_second"])
        if self.history_path is not None:  # process 0 of a multi-host run
            self._lines.append(json.dumps(rec) + "\n")
            if not paths.is_remote(self.history_path):
                paths.append_text(self.history_path, self._lines.pop())
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for k, v in rec.items():
                    if k != "step":
                        tf.summary.scalar(k, v)

    def on_epoch_end(self, epoch, logs=None):
        # An object store cannot append: one rewrite per fit() call, not per step.
        if self._lines:
            paths.append_text(self.history_path, "".join(self._lines))
            self._lines = []


def read_history(path, upto):
    records = []
    if paths.exists(path):
        for line in paths.read_text(path).splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec["step"] <= upto:
                records.append(rec)
    paths.write_text(path, "".join(json.dumps(rec) + "\n" for rec in records))
    return records


def plot_history(records, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    losses = [r["loss"] / math.log(2) for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="per step")
    if len(losses) >= 10:
        k = max(len(losses) // 50, 5)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (bits per position)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with paths.staged_dir(paths.dirname(path)) as local:
        fig.savefig(os.path.join(local, paths.basename(path)), dpi=100)
    plt.close(fig)


def resolved_config():
    backend = keras.backend.backend()
    model_config = common.resolve_model_config(
        FLAGS.preset, FLAGS.size, FLAGS.override, FLAGS.segment_length
    )
    vocab = common.tokenizer_vocabulary(FLAGS.tokenizer)
    if vocab > model_config["vocabulary_size"]:
        raise common.UsageError(
            f"--tokenizer has {vocab} ids but the model's vocabulary_size is "
            f"{model_config['vocabulary_size']}; add --override vocabulary_size={vocab}."
        )
    if FLAGS.steps <= 0 or FLAGS.batch_size <= 0:
        raise common.UsageError("--steps and --batch_size must be positive.")
    if FLAGS.checkpoint_every <= 0:
        raise common.UsageError("--checkpoint_every must be positive.")
    return {
        "backend": backend,
        "preset": FLAGS.preset,
        "size": FLAGS.size,
        "model": model_config,
        "corpus": FLAGS.corpus,
        "split": FLAGS.split,
        "text_feature": FLAGS.text_feature,
        "data_dir": FLAGS.data_dir,
        "tokenizer": FLAGS.tokenizer or "bytes",
        "steps": FLAGS.steps,
        "batch_size": FLAGS.batch_size,
        "segment_length": model_config["segment_length"],
        "optimizer": FLAGS.optimizer,
        "schedule": FLAGS.schedule,
        "learning_rate": FLAGS.learning_rate,
        "warmup_steps": FLAGS.warmup_steps,
        "weight_decay": FLAGS.weight_decay,
        "mixed_precision": FLAGS.mixed_precision,
        "strategy": FLAGS.strategy,
        "num_processes": FLAGS.num_processes,
        "checkpoint_every": FLAGS.checkpoint_every,
        "keep_checkpoints": FLAGS.keep_checkpoints,
        "seed": FLAGS.seed,
        "overrides": list(FLAGS.override),
        "loss": "masked NLL summed over tokens / (B*L) (the reference's sum loss up to a constant)",
    }


def draw_batches(iterator, pending, n):
    """`n` batches as numpy dicts: first those in `pending` (drawn before a
    preemption stopped a chunk early; consumed from the list), then new
    ones from `iterator`."""
    batches = []
    while pending and len(batches) < n:
        batches.append(pending.pop(0))
    while len(batches) < n:
        batch = next(iterator)
        batches.append({k: batch[k].numpy() for k in BATCH_KEYS})
    return batches


def stack_batches(batches):
    return {k: np.stack([b[k] for b in batches]) for k in BATCH_KEYS}


def unstack_batches(stacked):
    if not stacked:
        return []
    n = len(stacked[BATCH_KEYS[0]])
    return [{k: stacked[k][i] for k in BATCH_KEYS} for i in range(n)]


def train():
    if not FLAGS.model_dir:
        raise common.UsageError(
            "--model_dir is required (where config, checkpoints and logs go)."
        )
    config = resolved_config()
    if keras.backend.backend() == "tensorflow":
        from trainers.backend import configure_tf_devices

        configure_tf_devices(FLAGS.cpu_devices)
    setup = common.setup_distribution(
        FLAGS.strategy,
        keras.backend.backend(),
        cpu_devices=FLAGS.cpu_devices,
        tpu=FLAGS.tpu,
        mesh=FLAGS.mesh,
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
    )
    global_batch = FLAGS.batch_size
    if global_batch % setup.num_replicas:
        r = setup.num_replicas
        raise common.UsageError(
            f"--batch_size={global_batch} is not divisible by the {r} replicas; use a multiple of "
            f"{r}, e.g. --batch_size={max(r, global_batch // r * r)}."
        )
    if global_batch % setup.process_count:
        raise common.UsageError(
            f"--batch_size must be divisible by --num_processes={setup.process_count}."
        )
    host_batch = global_batch // setup.process_count
    state_batch = (
        global_batch // setup.num_replicas
        if setup.strategy is not None
        else global_batch
    )
    config.update(
        num_replicas=setup.num_replicas, host_batch=host_batch, state_batch=state_batch
    )
    # One run directory for all processes: process 0 holds the lock and
    # writes config, logs and model.keras; every process writes the
    # checkpoint shards and data position it owns.
    model_dir = FLAGS.model_dir
    chief = setup.process_index == 0
    lock = run_lock.RunLock(model_dir) if chief else contextlib.nullcontext()
    # The lock first (one writer), then the guard, and only then a write.
    with (
        lock,
        preemption.Preemption(process_count=setup.process_count) as preempt,
    ):
        if chief:
            run_dir.check(model_dir, config, FLAGS.start_over)
            common.write_json(paths.join(model_dir, "config.json"), config)
        _sync_processes(setup, "run directory ready")
        return run_training(config, setup, model_dir, preempt)


def _ckpt_path(manager, step):
    if hasattr(manager, "latest_meta"):  # Orbax (JAX)
        return paths.join(manager.directory, f"ckpt_{step:08d}")
    return paths.join(manager.directory, f"ckpt-{step:08d}")


def _wait_for_checkpoints(manager):
    """Orbax writes in the background: wait before exiting."""
    wait = getattr(manager, "wait_until_finished", None)
    if wait is not None:
        wait()


def _sync_processes(setup, name):
    if setup.process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def run_training(config, setup, model_dir, preempt):
    """Trains in `model_dir` (locked, guarded); exits with
    `preemption.EXIT_STATUS` after checkpointing when `preempt` fires."""
    global_batch = FLAGS.batch_size
    if FLAGS.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")

    L = config["segment_length"]

    def open_data(shard_index, num_shards, batch_size):
        return common.open_dataset(
            FLAGS.corpus,
            FLAGS.split,
            segment_length=L,
            batch_size=batch_size,
            tokenizer=FLAGS.tokenizer,
            data_dir=FLAGS.data_dir,
            seed=FLAGS.seed,
            shard_index=shard_index,
            num_shards=num_shards,
            text_feature=FLAGS.text_feature,
        )

    ckpt_dir = paths.join(model_dir, "checkpoints")
    log = lambda m: print(f"WARNING: {m}", file=sys.stderr, flush=True)  # noqa: E731
    if config["backend"] == "jax":
        from trainers import orbax_checkpoints

        # Orbax: sharded, asynchronous, resumable on another topology. The
        # run keeps the data shards it started with (one per process).
        manager = orbax_checkpoints.CheckpointManager(
            ckpt_dir, FLAGS.keep_checkpoints, log, run_config=config
        )
        meta = manager.latest_meta() or {}
        num_shards = meta.get("num_data_shards") or setup.process_count
        try:
            iterator = orbax_checkpoints.DataShards(open_data, num_shards, global_batch)
        except ValueError as e:
            raise common.UsageError(str(e)) from e
    else:
        manager = CheckpointManager(
            ckpt_dir, keep=FLAGS.keep_checkpoints, log=log, run_config=config
        )
        iterator = iter(
            open_data(setup.process_index, setup.process_count, config["host_batch"])
        )

    with setup.scope():
        lm = common.build_lm(config["model"], FLAGS.seed)
        model = common.build_stream_model(lm, config["state_batch"])
        optimizer = common.make_optimizer(
            FLAGS.optimizer,
            FLAGS.schedule,
            FLAGS.learning_rate,
            FLAGS.warmup_steps,
            FLAGS.steps,
            FLAGS.weight_decay,
        )
        model.compile(
            optimizer=optimizer, loss=common.training_loss(), jit_compile="auto"
        )
        optimizer.build(model.trainable_variables)

    restored = manager.restore(lm, optimizer, iterator, model.trainable_variables)
    step = 0
    pending = []  # batches drawn from the iterator but not trained on yet
    if restored.manifest is not None:
        step = restored.manifest["step"]
        common.set_stream_state(model, restored.state, training=True)
        pending = unstack_batches(restored.pending)
        print(f"Resuming from step {step} ({_ckpt_path(manager, step)})", flush=True)
    saved_step = step
    chief = setup.process_index == 0  # writes the logs
    history_path = paths.join(model_dir, "history.jsonl") if chief else None
    if chief:
        read_history(history_path, step)
    tb_dir = paths.join(model_dir, "tensorboard")
    # TensorFlow cannot write gs:// through gcsfs: events go to a local
    # directory copied up at every checkpoint and at the end.
    tb_local = None if paths.tf_native(tb_dir) else tempfile.mkdtemp(prefix="brt-tb-")
    writer = tf.summary.create_file_writer(tb_local or tb_dir) if chief else None

    def flush_logs():
        if writer is not None:
            writer.flush()
            if tb_local:
                paths.copy_tree(tb_local, tb_dir)

    progress = Progress(FLAGS.steps, step, FLAGS.verbose)
    logger = StepLogger(history_path, writer, global_batch * L, progress)
    n_params = sum(int(np.prod(v.shape)) for v in lm.trainable_weights)
    print(
        f"{config['preset']}/{config['size']}: {n_params / 1e6:.2f}M parameters, backend "
        f"{config['backend']}, strategy {config['strategy']} ({setup.num_replicas} replica(s)), "
        f"batch {global_batch} x {L} tokens, {FLAGS.steps} steps",
        flush=True,
    )

    def save():
        return manager.save(
            step,
            lm,
            optimizer,
            common.get_stream_state(model, training=True),
            iterator,
            extra={"backend": config["backend"]},
            pending=stack_batches(pending) if pending else None,
        )

    chunk = max(1, min(FLAGS.chunk_steps, FLAGS.checkpoint_every))
    t_start = time.time()
    start_step = step
    callbacks = [logger, preempt.callback()]
    while step < FLAGS.steps and not preempt.agree():
        next_ckpt = (step // FLAGS.checkpoint_every + 1) * FLAGS.checkpoint_every
        n = min(chunk, FLAGS.steps - step, next_ckpt - step)
        batches = draw_batches(iterator, pending, n)
        chunk_ds = tf.data.Dataset.from_tensor_slices(stack_batches(batches)).map(
            common.to_model_inputs
        )
        logger.start_step = step
        model.fit(chunk_ds, epochs=1, verbose=0, callbacks=callbacks, shuffle=False)
        done = logger.batches_done
        step += done
        # A preemption stops fit early: the rest were drawn, not trained on.
        pending = batches[done:] + pending
        progress.end_chunk(
            logger.last.get("loss"), logger.last.get("tokens_per_second")
        )
        if step % FLAGS.checkpoint_every == 0 or step == FLAGS.steps:
            path = save()
            saved_step = step
            flush_logs()
            logging.info("checkpoint %s", path)
    if preempt.stopping and step < FLAGS.steps:
        path = _ckpt_path(manager, step)
        if step != saved_step or not paths.isdir(path):
            path = save()
        _wait_for_checkpoints(manager)
        flush_logs()
        progress.message(
            f"{preempt.signal_name} received: stopped after step {step}; checkpoint "
            f"{path}. Re-run the same command to resume. Exit status "
            f"{preemption.EXIT_STATUS} (preempted)."
        )
        sys.exit(preemption.EXIT_STATUS)
    elapsed = time.time() - t_start
    _wait_for_checkpoints(manager)
    keras_path = paths.join(model_dir, "model.keras")
    if not chief:
        # Saving reads every weight, which may take all processes: the
        # others save too, into a directory that is then dropped.
        with tempfile.TemporaryDirectory() as tmp:
            lm.save(os.path.join(tmp, "model.keras"))
        return None
    records = read_history(history_path, step)
    flush_logs()
    common.save_keras(lm, keras_path)
    plot_path = paths.join(model_dir, "loss_curve.png")
    if FLAGS.save_plot and records:
        plot_history(
            records,
            plot_path,
            f"{config['preset']}/{config['size']} on {config['corpus']}",
        )
    summary = {
        "steps": step,
        "steps_this_run": step - start_step,
        "seconds_this_run": round(elapsed, 1),
        "final_loss": records[-1]["loss"] if records else None,
        "model": keras_path,
        "config": paths.join(model_dir, "config.json"),
        "checkpoints": manager.directory,
        "tensorboard": tb_dir,
        "loss_curve": plot_path if FLAGS.save_plot and records else None,
    }
    common.write_json(paths.join(model_dir, "train_summary.json"), summary)
    print("Training done:\n" + json.dumps(summary, indent=2), flush=True)
    return summary


main = common.binary_main(train)


if __name__ == "__main__":
    app.run(main)
