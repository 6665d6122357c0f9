"""Shared helpers for the benchmark scripts: backend set-up, compiled train
and forward steps, timing, memory sampling, tables, JSON and plots.

Every script writes `benchmarks/results/<name>.json` and `<name>.png` and
prints a plain-text table. Nothing here asserts on time.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if os.environ["KERAS_BACKEND"] == "jax":
    # As the trainers do: a benchmark run as a program restarts once with the
    # allocator settings JAX's CPU client needs (trainers/backend.py;
    # BRT_DEFAULT_MALLOC=1 measures glibc's defaults), and remat saves memory.
    from trainers.backend import keep_remat_on_cpu
    from trainers.backend import restart_with_host_tunables

    _main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if _main_spec is not None and _main_spec.name.startswith("benchmarks."):
        restart_with_host_tunables()
    keep_remat_on_cpu()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Table 1 step times, relative to Slide:13L (spec section 13).
PAPER_STEP_TIME = {
    "xl_512": 0.88,
    "xl_1024": 1.20,
    "xl_2048": 2.11,
    "slide_12": 0.93,
    "slide_13": 1.00,
    "rec_lstm_dual": 1.06,
    "rec_lstm_single": 1.05,
    "rec_lstm_skip": 1.00,
    "rec_fixed_dual": 1.01,
    "rec_fixed_single": 1.02,
    "rec_fixed_skip": 0.99,
    "feedback_lstm_single": 1.40,
    "feedback_fixed_skip": 1.35,
}
# Of these only xl_512, xl_2048, slide_13, rec_fixed_skip are corroborated.
PAPER_CORROBORATED = ("xl_512", "xl_2048", "slide_13", "rec_fixed_skip")


def backend():
    return keras.backend.backend()


# --------------------------------------------------------------------------
# Machine and run description
# --------------------------------------------------------------------------


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_name():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info():
    """What ran the benchmark: CPU, cores, backend, versions, date, load."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        # Cores this process may run on (taskset / cgroup pinning).
        "cores_used": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "gpu": _gpu_name(),
        "backend": backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }
    if backend() == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    elif backend() == "jax":
        import jax

        info["jax"] = jax.__version__
        info["jax_devices"] = [str(d) for d in jax.devices()]
        info["xla_flags"] = os.environ.get("XLA_FLAGS")
        info["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES")
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def format_table(headers, rows):
    """Markdown-style table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value):
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.2f}"
        return f"{value:.3f}"
    if value is None:
        return "–"
    return str(value)


def results_path(name, ext, out_dir=None):
    out_dir = out_dir or RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, f"{name}.{ext}")


def write_results(name, payload, out_dir=None):
    """Writes `<name>.json`; returns its path."""
    path = results_path(name, "json", out_dir)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
        f.write("\n")
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def new_figure(ncols=1, width=6.0, height=4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height))
    return fig, axes


def save_figure(fig, name, out_dir=None):
    import matplotlib.pyplot as plt

    path = results_path(name, "png", out_dir)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(name, title, headers, rows, payload, out_dir=None, notes=()):
    """Prints the table and notes, writes the JSON (table included)."""
    table = format_table(headers, rows)
    print(f"\n## {title}\n")
    print(table)
    for note in notes:
        print(f"- {note}")
    payload = dict(payload)
    payload.setdefault("machine", machine_info())
    payload["table"] = {"headers": list(headers), "rows": rows}
    payload["notes"] = list(notes)
    path = write_results(name, payload, out_dir)
    print(f"\nwrote {path}")
    return table


def base_parser(description):
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, a few steps (smoke run)"
    )
    parser.add_argument(
        "--out-dir", default=None, help="results folder (default benchmarks/results)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


# --------------------------------------------------------------------------
# Models and compiled steps
# --------------------------------------------------------------------------


def build_lm(variant, size, window=None, **overrides):
    """`BlockRecurrentCausalLM.from_preset`; `window` rescales the base
    window W (XL windows stay 2x / 4x of it, Slide/Rec keep 8 blocks)."""
    from brt_keras import BlockRecurrentCausalLM
    from brt_keras.models import presets

    if window is not None:
        overrides["block_size"] = window * presets.VARIANTS[variant]["window"]
    return BlockRecurrentCausalLM.from_preset(variant, size=size, **overrides)


def count_params(lm, include_embedding=True):
    total = sum(int(np.prod(v.shape)) for v in lm.trainable_variables)
    if not include_embedding:
        emb = lm.backbone.token_embedding.embeddings
        total -= int(np.prod(emb.shape))
    return total


def masked_loss(logits, targets, inputs):
    """Mean cross-entropy over positions whose input and target are not 0."""
    mask = ops.cast(ops.logical_and(inputs > 0, targets > 0), "float32")
    ce = ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    return ops.sum(ce * mask) / ops.maximum(ops.sum(mask), 1.0)


class TrainStep:
    """One compiled training step on a carried state:
    `loss, state = step(inputs, targets, state, start_of_sequence)`.

    TensorFlow: `tf.function(jit_compile=True)` around GradientTape and the
    optimizer. JAX: `jax.jit` over a stateless loss and
    `optimizer.stateless_apply` (variables written back after each call).
    `loss_fn(logits, targets, inputs)` defaults to `masked_loss` (computed
    without the logits when the backbone sets `loss_chunk_tokens`).
    """

    def __init__(self, lm, optimizer=None, loss_fn=None, jit_compile=True):
        self.lm = lm
        self.optimizer = optimizer or keras.optimizers.Adafactor(learning_rate=0.01)
        self.loss_fn = loss_fn or masked_loss
        self.optimizer.build(lm.trainable_variables)
        self.jit_compile = jit_compile
        if backend() == "tensorflow":
            self._step = self._tf_step()
        elif backend() == "jax":
            self._step = self._jax_step()
        else:
            raise ValueError(f"backend {backend()!r} is not supported here")

    def _forward_loss(self, inputs, targets, state, sos):
        if self.loss_fn is masked_loss and self.lm.backbone.loss_chunk_tokens:
            # masked_loss without the [B, L, V] logits (loss_chunk_tokens).
            hidden, new_state = self.lm.backbone.call_with_state(
                inputs, state, start_of_sequence=sos, training=True
            )
            from brt_keras.models.block_recurrent_stream_model import loss_weights

            mask = loss_weights(inputs, targets)
            total = self.lm.readout_loss(hidden, targets, mask)
            return total / ops.maximum(ops.sum(mask), 1.0), new_state
        logits, new_state = self.lm.call_with_state(
            inputs, state, start_of_sequence=sos, training=True
        )
        return self.loss_fn(logits, targets, inputs), new_state

    def _tf_step(self):
        import tensorflow as tf

        lm, opt = self.lm, self.optimizer

        def step(inputs, targets, state, sos):
            with tf.GradientTape() as tape:
                loss, new_state = self._forward_loss(inputs, targets, state, sos)
            grads = tape.gradient(loss, lm.trainable_variables)
            opt.apply_gradients(zip(grads, lm.trainable_variables))
            return loss, new_state

        return tf.function(step, jit_compile=self.jit_compile)

    def _jax_step(self):
        import jax

        lm, opt = self.lm, self.optimizer
        trainable = lm.trainable_variables
        non_trainable = lm.non_trainable_variables

        def loss_fn(tv, ntv, inputs, targets, state, sos):
            mapping = list(zip(trainable, tv)) + list(zip(non_trainable, ntv))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                loss, new_state = self._forward_loss(inputs, targets, state, sos)
            # A value the step did not write passes through: its input
            # buffer is donated, so the variable must get it back.
            ntv = [
                old if new is None else new
                for new, old in zip(
                    (scope.get_current_value(v) for v in non_trainable), ntv
                )
            ]
            return loss, (new_state, ntv)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def step(tv, ntv, ov, inputs, targets, state, sos):
            (loss, (new_state, ntv)), grads = grad_fn(
                tv, ntv, inputs, targets, state, sos
            )
            tv, ov = opt.stateless_apply(ov, grads, tv)
            return loss, new_state, tv, ntv, ov

        # Weights, non-trainables and optimizer slots are replaced every
        # step: donating them lets XLA update them in place (no second copy).
        jitted = jax.jit(step, donate_argnums=(0, 1, 2)) if self.jit_compile else step

        def run(inputs, targets, state, sos):
            tv = [v.value for v in trainable]
            ntv = [v.value for v in non_trainable]
            ov = [v.value for v in opt.variables]
            loss, new_state, tv, ntv, ov = jitted(
                tv, ntv, ov, inputs, targets, state, sos
            )
            for var, value in zip(trainable, tv):
                var.assign(value)
            for var, value in zip(non_trainable, ntv):
                if value is not None:
                    var.assign(value)
            for var, value in zip(opt.variables, ov):
                var.assign(value)
            return loss, new_state

        return run

    def __call__(self, inputs, targets, state, start_of_sequence=None):
        batch = inputs.shape[0]
        if start_of_sequence is None:
            start_of_sequence = np.zeros((batch,), bool)
        inputs = ops.convert_to_tensor(inputs, "int32")
        targets = ops.convert_to_tensor(targets, "int32")
        sos = ops.convert_to_tensor(start_of_sequence, "bool")
        return self._step(inputs, targets, state, sos)


def forward_fn(lm):
    """Compiled inference segment `(logits, state) = f(ids, state)`."""
    return lm._compiled("segment", lm.call_with_state)


def block_until_ready(x):
    """Forces the computation behind `x` (any nest) to finish."""
    for leaf in keras.tree.flatten(x):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
        else:
            np.asarray(leaf)
    return x


def timed(fn, *args):
    t0 = time.perf_counter()
    out = block_until_ready(fn(*args))
    return time.perf_counter() - t0, out


def random_ids(rng, batch, length, vocabulary_size):
    return rng.integers(1, vocabulary_size, (batch, length)).astype("int32")


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------


def rss_bytes():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process' resident memory in a thread; `peak` is the
    maximum seen inside the `with` block (bytes)."""

    def __init__(self, interval=0.005):
        self.interval = interval
        self.peak = 0
        self.start = 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return False


def python_for_peer():
    return os.path.join(REPO_ROOT, ".venv-peer", "bin", "python")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def add_isolated_args(parser):
    """The hidden flags through which `run_isolated` calls a benchmark."""
    import argparse

    parser.add_argument("--_single", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_single-out", default=None, help=argparse.SUPPRESS)


def run_if_isolated(args, fn):
    """In a child started by `run_isolated`: writes `fn(*spec)` to the
    result file and returns True; otherwise returns False."""
    if not args._single:
        return False
    result = fn(*json.loads(args._single))
    with open(args._single_out, "w") as f:
        json.dump(result, f)
    return True


def run_isolated(module, spec):
    """Runs `python -m <module> --_single <json spec>` in a fresh process, so
    memory is returned between runs and a run killed for memory is recorded,
    not fatal. Returns `(result_dict, None)` or `(None, "exit N: why")`."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run(
            [sys.executable, "-m", module, "--_single", json.dumps(spec)]
            + ["--_single-out", out.name],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            why = (
                "killed (out of memory?)"
                if proc.returncode in (-9, 137)
                else (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
            )
            return None, f"exit {proc.returncode}: {why}"
        with open(out.name) as f:
            return json.load(f), None
