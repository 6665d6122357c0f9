"""Backend and device selection that must happen before Keras / TF / JAX load.

``select(argv)`` reads ``--backend`` and ``--cpu_devices`` straight from the
command line (absl has not parsed it yet) and sets ``KERAS_BACKEND`` and, for
JAX, ``XLA_FLAGS`` (host devices; ``keep_remat_on_cpu``). The TF logical CPU
devices are configured by ``configure_tf_devices`` right after TF is
imported, before any op runs.
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


def _flag_value(argv, name):
    value = None
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def select(argv=None, default=None) -> str:
    """Sets KERAS_BACKEND from ``--backend`` (else ``default``, else the
    environment, else ``tensorflow``, or the backend recorded in the
    ``--model_dir`` config); returns it. Exits with a clear message when Keras
    was already imported with another backend."""
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
