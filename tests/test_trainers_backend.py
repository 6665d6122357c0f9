"""`trainers.backend`: XLA flags set before JAX starts (remat that saves
memory on JAX's CPU client). Backend-independent: JAX runs in a subprocess."""

import pytest

# Compiles the gradient of three sliding-window layers on JAX's CPU client and
# prints XLA's planned temporary memory without and with remat="layer", with
# the flag `keep_remat_on_cpu` adds.
_JAX_REMAT_MEMORY = """
import json, os
os.environ.pop("XLA_FLAGS", None)
os.environ["KERAS_BACKEND"] = "jax"
os.environ["JAX_PLATFORMS"] = "cpu"
from trainers import backend
assert backend.keep_remat_on_cpu()
import jax, keras, numpy as np
from brt_keras.layers.sliding_window_layer import SlidingWindowLayer

def temp_bytes(remat):
    keras.utils.set_random_seed(0)
    layers = [
        SlidingWindowLayer(32, 2, 16, 64, block_size=16, dropout=0.0, remat=remat)
        for _ in range(3)
    ]
    x = np.random.default_rng(0).standard_normal((1, 256, 32)).astype("float32")
    states = [layer.get_initial_state(1) for layer in layers]
    for layer, state in zip(layers, states):
        layer.call_with_state(x, state)
    variables = [v for layer in layers for v in layer.trainable_variables]

    def loss(values, x):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            for layer, state in zip(layers, states):
                x, _ = layer.call_with_state(x, state, training=True)
        return keras.ops.sum(keras.ops.square(x))

    compiled = jax.jit(jax.grad(loss)).lower([v.value for v in variables], x).compile()
    return compiled.memory_analysis().temp_size_in_bytes

print(json.dumps({"plain": temp_bytes(False), "layer": temp_bytes("layer")}))
"""


def _jax_temp_bytes():
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", _JAX_REMAT_MEMORY],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_remat_saves_memory_on_jax_cpu():
    """Regression: on JAX's CPU client `remat="layer"` planned as much
    temporary memory as the plain path (XLA:CPU deletes the optimization
    barriers before CSE merges the recomputation back into the forward pass).
    With `trainers.backend.keep_remat_on_cpu` (applied by every trainer on
    JAX) it plans far less."""
    pytest.importorskip("jax")
    kept = _jax_temp_bytes()
    assert kept["layer"] < 0.6 * kept["plain"], kept


def test_keep_remat_flag_only_where_jax_is_cpu_alone():
    from trainers import backend

    env = {}
    assert backend.keep_remat_on_cpu(env, accelerator_installed=False)
    assert env["XLA_FLAGS"] == backend.KEEP_REMAT_FLAG
    assert not backend.keep_remat_on_cpu(env, accelerator_installed=False)  # once
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert backend.keep_remat_on_cpu(env, accelerator_installed=False)
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        backend.KEEP_REMAT_FLAG,
    ]
    # The user's own choice of passes wins; GPU/TPU clients are left alone.
    env = {"XLA_FLAGS": "--xla_disable_hlo_passes=foo"}
    assert not backend.keep_remat_on_cpu(env, accelerator_installed=False)
    assert not backend.keep_remat_on_cpu({}, accelerator_installed=True)
    assert not backend.keep_remat_on_cpu({"JAX_PLATFORMS": "cuda,cpu"})
    env = {"JAX_PLATFORMS": "cpu"}
    assert backend.keep_remat_on_cpu(env, accelerator_installed=True)
