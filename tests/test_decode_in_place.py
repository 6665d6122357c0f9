"""The decode loop updates its key/value rings in place (issue 12).

Regression: `SlidingWindowLayer.decode_step` wrote the new token into the
ring and then attended to the written ring. XLA computed the write twice
(for the attention and for the loop carry) and copied every ring on every
token at batch 1; attending first without ordering the write after the
reads made it copy them at every batch size. `small_37m` batch 1 went from
19.4 to 12.6 ms per token on JAX with the fix. Each backend compiles the
decode loop (`ops.fori_loop` over `call_with_cache`, as `generate` runs it)
in a subprocess; the tests read the optimized HLO for copies of a
loop-carried ring (`copy(get-tuple-element)` of a ring's shape) and for
per-token transposes of the recurrent state's keys/values.
"""

import functools

import pytest

from trainers import testing

pytestmark = pytest.mark.model

_RING_COPIES = """
import json, re
import keras, numpy as np
from keras import ops
from brt_keras import BlockRecurrentCausalLM

keras.utils.set_random_seed(0)
lm = BlockRecurrentCausalLM.from_preset("rec_fixed_skip", size="tiny")
w = lm.backbone.block_size


def optimized_hlo(fn, *args):
    if keras.backend.backend() == "jax":
        import jax

        variables = lm.variables

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        values = [v.value for v in variables]
        return jax.jit(stateless).lower(values, *args).compile().as_text()
    import tensorflow as tf

    compiled = tf.function(fn, jit_compile=True)
    return compiled.experimental_get_compiler_ir(*args)(stage="optimized_hlo")


def decode_loop(cache, token):
    def body(i, carry):
        cache, token = carry
        logits, _, cache = lm.call_with_cache(token[:, None], cache, i)
        return cache, ops.cast(ops.argmax(logits[:, 0], axis=-1), "int32")

    return ops.fori_loop(0, 3 * w, body, (cache, token))


found = {}
for batch in (1, 4):
    cache = lm.decode_cache(lm.get_initial_state(batch))
    text = optimized_hlo(decode_loop, cache, np.ones((batch,), "int32"))
    rings = {
        "[" + ",".join(str(n) for n in c[name].shape) + "]"
        for c in cache.values()
        for name in ("keys", "values")
    }
    copies = re.findall(r"= f32(\\[[0-9,]+\\])\\S* copy\\(%get-tuple-element", text)
    # The recurrent state's keys/values `[B, S, H, Dh]`, either axis order.
    layer = lm.backbone.transformer_layers[lm.backbone.recurrent_indices[0]]
    s, h, dh = layer.num_states, layer.num_heads, layer.head_dim
    state_shapes = {f"[{batch},{s},{h},{dh}]", f"[{batch},{h},{s},{dh}]"}
    # Transposes of them outside the block-end branch run every token.
    per_token = []
    for line in text.splitlines():
        m = re.search(r"= f32(\\[[0-9,]+\\])\\S* transpose\\(", line)
        if m and m.group(1) in state_shapes and "cond" not in line:
            per_token.append(line.strip()[:160])
    found[batch] = {
        "ring_copies": [shape for shape in copies if shape in rings],
        "rings": sorted(rings),
        "has_loop": " while(" in text,
        "state_transposes": per_token,
        "names_cond": "cond" in text,
    }
print(json.dumps(found))
"""


@functools.cache
def _loop_hlo_facts(backend):
    """One subprocess per backend serves both tests."""
    return testing.run_json_script(_RING_COPIES, backend=backend)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_decode_loop_copies_no_ring(backend):
    if backend == "jax":
        pytest.importorskip("jax")
    found = _loop_hlo_facts(backend)
    for batch, result in found.items():
        assert result["has_loop"], batch  # the loop was compiled, not unrolled
        assert len(result["rings"]) >= 2, result  # window and 2W rings
        assert result["ring_copies"] == [], f"batch {batch}: {result}"


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_decode_loop_reads_state_keys_values_in_place(backend):
    """Regression: the decode cache held the state's keys/values token-major
    and every step transposed both for the cross-attention (JAX
    `small_37m` batch 32: 10.6 of 156 ms per step); now the cache holds
    them head-major and flat, and only the block-end branch transposes."""
    if backend == "jax":
        pytest.importorskip("jax")
    found = _loop_hlo_facts(backend)
    for batch, result in found.items():
        assert result["names_cond"], batch  # the block-end branch is a cond
        assert result["state_transposes"] == [], f"batch {batch}: {result}"
