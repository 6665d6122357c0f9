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
    from trainers import testing

    return testing.run_json_script(_JAX_REMAT_MEMORY)


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


# Runs a jitted function with a 64 MiB result five times on JAX's CPU client,
# after `backend.select` as the trainers call it (run as the main program, so
# it may restart itself), and prints the minor page faults those calls took.
_JAX_PAGE_FAULTS = """
import json, os, resource
from trainers import backend
backend.select(["trainer", "--backend", "jax"], main=True)
import jax, jax.numpy as jnp

f = jax.jit(lambda x: jnp.tanh(x) * 2.0 + 1.0)
x = jnp.ones((4096, 4096), jnp.float32)
f(x).block_until_ready()
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "tunables": os.environ.get("GLIBC_TUNABLES")}))
"""


def _jax_page_faults(**env):
    from trainers import testing

    # Starts from glibc's defaults whatever the test runner was started with.
    drop = ("GLIBC_TUNABLES", "BRT_DEFAULT_MALLOC", "MALLOC_*")
    return testing.run_json_script(_JAX_PAGE_FAULTS, env=env, drop=drop)


def test_jax_trainers_keep_host_memory_between_steps():
    """Regression: on JAX's CPU client every step's buffers came from glibc
    mmap and went back with munmap, so each step faulted its whole working
    set in again (2.8M minor faults, 24 s of system time per `small_37m`
    step). A trainer on JAX restarts itself with `HOST_MALLOC_TUNABLES`, and
    then a repeated step takes almost no page faults."""
    pytest.importorskip("jax")
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("measures glibc's allocator settings; this C library is not glibc")
    default = _jax_page_faults(BRT_DEFAULT_MALLOC="1")
    kept = _jax_page_faults()
    from trainers import backend

    assert default["tunables"] is None
    assert kept["tunables"] == backend.HOST_MALLOC_TUNABLES
    # 5 x 64 MiB of 4 KiB pages is 82k faults when each result is mapped anew.
    assert default["faults"] > 40_000, default
    assert kept["faults"] < 0.05 * default["faults"], (kept, default)


def test_host_malloc_tunables_only_where_jax_is_cpu_alone():
    import platform

    from trainers import backend

    if platform.libc_ver()[0] != "glibc":  # the settings are glibc's: none elsewhere
        assert not backend.host_malloc_tunables({}, accelerator_installed=False)
        return
    env = {}
    assert backend.host_malloc_tunables(env, accelerator_installed=False)
    assert env["GLIBC_TUNABLES"] == backend.HOST_MALLOC_TUNABLES
    assert not backend.host_malloc_tunables(env, accelerator_installed=False)  # once
    # Other tunables are kept; malloc choices of the user's own win.
    env = {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}
    assert backend.host_malloc_tunables(env, accelerator_installed=False)
    assert env["GLIBC_TUNABLES"].split(":")[0] == "glibc.cpu.hwcaps=-AVX512F"
    for chosen in (
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"},
        {"MALLOC_ARENA_MAX": "2"},
        {"LD_PRELOAD": "libtcmalloc.so"},
        {"BRT_DEFAULT_MALLOC": "1"},
    ):
        assert not backend.host_malloc_tunables(
            dict(chosen), accelerator_installed=False
        )
    assert not backend.host_malloc_tunables({}, accelerator_installed=True)
    assert not backend.host_malloc_tunables({"JAX_PLATFORMS": "tpu"})
