"""Backend and device selection that must happen before Keras / TF / JAX load.

``select(argv)`` reads ``--backend`` and ``--cpu_devices`` straight from the
command line (absl has not parsed it yet) and sets ``KERAS_BACKEND`` and, for
JAX, ``XLA_FLAGS`` (host devices; ``keep_remat_on_cpu``) and glibc's
allocator settings (``host_malloc_tunables``; a program run as ``__main__``
restarts itself once so that they take effect). The TF logical CPU devices
are configured by ``configure_tf_devices`` right after TF is imported, before
any op runs.

    python -m trainers.backend     # prints the JAX-on-CPU environment, for
                                   # `model.fit` scripts: eval "$(...)"
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

BACKENDS = ("tensorflow", "jax")

# XLA:CPU's pipeline runs `cse_barrier_expander` (it deletes every
# optimization barrier) before common-subexpression elimination, which then
# merges `jax.checkpoint`'s recomputation back into the forward pass: remat
# runs but saves nothing (a 12-layer toy keeps 1.62 GiB of temporaries with
# or without it, 0.25 GiB with this flag; `tests/test_trainers_backend.py`).
KEEP_REMAT_FLAG = "--xla_disable_hlo_passes=cse_barrier_expander"
# Packages that give JAX a GPU or TPU client (found without importing them).
_ACCELERATOR_PACKAGES = (
    "jax_plugins",
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
    "libtpu",
)


def jax_runs_on_cpu_only(environ=None, accelerator_installed=None) -> bool:
    """True when JAX will have only its CPU client: ``JAX_PLATFORMS`` names
    nothing but ``cpu``, or it is unset and no GPU/TPU plugin is installed."""
    environ = os.environ if environ is None else environ
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return {p.strip() for p in platforms.split(",") if p.strip()} <= {"cpu"}
    if accelerator_installed is None:
        accelerator_installed = any(
            importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PACKAGES
        )
    return not accelerator_installed


def keep_remat_on_cpu(environ=None, accelerator_installed=None) -> bool:
    """Adds ``KEEP_REMAT_FLAG`` to ``XLA_FLAGS`` so that ``keras.remat`` (the
    models' ``remat=True`` / ``"layer"``) saves memory on JAX's CPU client.

    Only where JAX runs on CPU alone (GPU and TPU compilers are left as they
    are: measured on CPU only) and where ``XLA_FLAGS`` does not
    already choose passes to disable (the user's choice wins). Must run
    before JAX creates its first client. It changes nothing without remat:
    only remat emits barriers. Returns True when the flag was added.
    """
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if "xla_disable_hlo_passes" in flags or not jax_runs_on_cpu_only(
        environ, accelerator_installed
    ):
        return False
    environ["XLA_FLAGS"] = f"{flags} {KEEP_REMAT_FLAG}".strip()
    return True


# JAX's CPU client takes every buffer and temporary of a step from glibc
# malloc, and glibc serves big blocks with mmap (in threads' arenas every block
# over 64 MiB) and gives them back with munmap on free: each step faults its
# whole working set in again, page by page (`slide_13` `small_37m`: 2.8M minor
# faults and 24.5 s of system time per step, as much as the arithmetic;
# benchmarks/README.md, jax_vs_tf). TF's BFC allocator keeps its memory, so
# TF never pays this. These settings keep freed memory in one heap that is
# never trimmed: one arena (threads' arenas cannot grow past 64 MiB), blocks
# below 32 GiB from the heap (the step's temporaries are one block of several
# GiB), backed by transparent huge pages where the kernel offers them
# (`madvise` mode). Measured: 52-60 s -> 24-25 s per step, 2 faults, 0.06 s
# of system time. glibc reads them only when a process starts.
HOST_MALLOC_TUNABLES = (
    "glibc.malloc.hugetlb=1"
    ":glibc.malloc.mmap_threshold=34359738368"
    ":glibc.malloc.trim_threshold=68719476736"
    ":glibc.malloc.arena_max=1"
)
# Any of these in the environment is the user's own allocator choice
# (`BRT_DEFAULT_MALLOC=1`: keep glibc's defaults, e.g. to measure them).
_MALLOC_ENV = (
    "BRT_DEFAULT_MALLOC",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "LD_PRELOAD",
)


def host_malloc_tunables(environ=None, accelerator_installed=None) -> bool:
    """Sets ``GLIBC_TUNABLES`` to ``HOST_MALLOC_TUNABLES`` where JAX runs on
    CPU alone on glibc, unless the user chose malloc settings already (or
    another allocator through ``LD_PRELOAD``, or ``BRT_DEFAULT_MALLOC=1``).
    Takes effect in processes started afterwards. Returns True when it set
    them."""
    import platform

    environ = os.environ if environ is None else environ
    if (
        "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")
        or any(environ.get(name) for name in _MALLOC_ENV)
        or platform.libc_ver()[0] != "glibc"
        or not jax_runs_on_cpu_only(environ, accelerator_installed)
    ):
        return False
    tunables = environ.get("GLIBC_TUNABLES", "")
    environ["GLIBC_TUNABLES"] = ":".join(filter(None, (tunables, HOST_MALLOC_TUNABLES)))
    return True


def restart_with_host_tunables() -> None:
    """Re-executes the running program (same interpreter, same command line)
    with ``host_malloc_tunables`` when they apply and are not in effect yet.
    For a program's entry point only, before it starts threads or writes
    anything; once restarted the tunables are set, so it runs once."""
    if host_malloc_tunables():
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _flag_value(argv, name):
    value = None
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def select(argv=None, default=None, main=False) -> str:
    """Sets KERAS_BACKEND from ``--backend`` (else ``default``, else the
    environment, else ``tensorflow``, or the backend recorded in the
    ``--model_dir`` config); returns it. Exits with a clear message when Keras
    was already imported with another backend. ``main``: the caller is the
    program being run (``__name__ == "__main__"``), which may restart itself
    for ``restart_with_host_tunables`` on JAX; never in-process callers."""
    argv = sys.argv if argv is None else argv
    backend = _flag_value(argv, "backend")
    if backend is None and default is None:
        model_dir = _flag_value(argv, "model_dir")
        if model_dir:
            from trainers import paths  # no Keras / TF import for local paths

            path = paths.join(model_dir, "config.json")
            if paths.exists(path):
                backend = json.loads(paths.read_text(path)).get("backend")
    backend = backend or default or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if backend not in BACKENDS:
        sys.exit(
            f"--backend={backend!r} is not supported; use one of {', '.join(BACKENDS)}."
        )
    if "keras" in sys.modules and os.environ.get("KERAS_BACKEND", backend) != backend:
        sys.exit(
            f"Keras was imported with backend {os.environ.get('KERAS_BACKEND')!r} before "
            f"--backend={backend} could take effect; run the trainer as a fresh process."
        )
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if backend == "jax":
        if main:
            restart_with_host_tunables()
        keep_remat_on_cpu()
    cpu_devices = _flag_value(argv, "cpu_devices")
    if backend == "jax" and cpu_devices and int(cpu_devices) > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = (
                f"{flags} --xla_force_host_platform_device_count={int(cpu_devices)}".strip()
            )
    return backend


def configure_tf_devices(cpu_devices: int):
    """Splits the first CPU into ``cpu_devices`` logical devices (tests of
    MirroredStrategy on CPU); must run before TF executes any op."""
    if cpu_devices <= 1:
        return
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * cpu_devices
        )
    except RuntimeError as e:
        raise RuntimeError(
            "--cpu_devices must be configured before TensorFlow runs any op; "
            "run the trainer as a fresh process."
        ) from e


if __name__ == "__main__":
    # The environment the trainers give JAX on CPU, for scripts of your own:
    #   eval "$(python -m trainers.backend)"; KERAS_BACKEND=jax python fit.py
    env = dict(os.environ)
    if host_malloc_tunables(env):
        print(f"export GLIBC_TUNABLES='{env['GLIBC_TUNABLES']}'")
    else:
        print("# nothing to set: not JAX on CPU with glibc, or malloc settings chosen")
