"""How much of JAX's training-step gap is the transposed-operand dot.

`python -m benchmarks.jax_vs_tf --only dots` isolates the op: under JAX,
XLA:CPU runs the weight gradient `x^T @ g` of a dense layer (the left operand
transposed) about 1.9x slower than TensorFlow's XLA, while the same product
on a row-major copy of `x^T` runs at TensorFlow's speed. This experiment
checks that it explains the whole step: the `small_37m` training step at the
issue setting on JAX, as shipped and with every `keras.layers.Dense` given a
custom gradient that copies `x^T` behind `jax.lax.optimization_barrier`
before the weight-gradient dot (so XLA cannot fold the transpose back into
the dot). Same arithmetic; the patch lives only in this benchmark (it is
JAX-specific and monkeypatches Keras, so it is not model code).

    KERAS_BACKEND=jax taskset -c 1 python -m benchmarks.jax_transposed_dot [--preset slide_13]

Found with it (2026-12-04): the slow product was the gradient of a 3-D
`Dense` (`[B, L, d] @ [d, f]`), which JAX's XLA:CPU compiles as a transposed
copy plus an Eigen dot; the model's projections are now `TokenDense`
(`brt_keras/layers/token_dense.py`, one `[B*L, d]` product, plain `keras.ops`),
which gives the same fast form without this patch.
"""

import os

from benchmarks import common
from benchmarks import step_time


def patch_dense():
    """Every `Dense` computes its weight gradient from a materialised `x^T`."""
    import jax
    import jax.numpy as jnp
    import keras

    @jax.custom_vjp
    def project(x, kernel):
        return jnp.matmul(x, kernel)

    def forward(x, kernel):
        return jnp.matmul(x, kernel), (x, kernel)

    def backward(saved, g):
        x, kernel = saved
        rows = x.reshape(-1, x.shape[-1])
        x_t = jax.lax.optimization_barrier(rows.T)  # a real row-major copy
        d_kernel = jnp.matmul(x_t, g.reshape(-1, g.shape[-1]))
        d_x = jnp.matmul(g, kernel.T)
        return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)

    project.defvjp(forward, backward)

    def call(self, inputs, training=None):
        if self.quantization_mode or getattr(self, "lora_enabled", False):
            raise ValueError("patch_dense: plain float Dense layers only")
        x = project(inputs, keras.ops.convert_to_tensor(self.kernel))
        if self.bias is not None:
            x = x + self.bias
        if self.activation is not None:
            x = self.activation(x)
        return x

    keras.layers.Dense.call = call


def single(patched, steps, quick, preset="rec_fixed_skip"):
    if common.backend() != "jax":
        raise SystemExit("run with KERAS_BACKEND=jax")
    if patched:
        patch_dense()
    size, window, tokens = step_time.SETTINGS["quick" if quick else "issue"]
    r = step_time.measure(preset, size, window, tokens, steps, dropout=0.0)
    r["patched_dense"] = patched
    return r


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--preset", default="rec_fixed_skip")
    common.add_isolated_args(parser)
    args = parser.parse_args(argv)
    if common.run_if_isolated(args, single):
        return
    os.environ.setdefault("KERAS_BACKEND", "jax")
    rows, runs = [], {}
    for patched in (False, True):
        label = "Dense with x^T copied" if patched else "as shipped"
        common.log(f"[jax_transposed_dot] {label} ...")
        steps = min(args.steps, 2) if args.quick else args.steps
        r, error = common.run_isolated(
            "benchmarks.jax_transposed_dot", [patched, steps, args.quick, args.preset]
        )
        if error:
            raise SystemExit(f"{label}: {error}")
        runs[label] = r
        rows.append([label, r["step_s"], r["step_min_s"], r["peak_rss_gib"]])
    base = runs["as shipped"]["step_s"]
    for row in rows:
        row.append(row[1] / base)
    common.report(
        "jax_transposed_dot",
        "JAX training step with and without the transposed-operand workaround",
        ["JAX step", "step s", "min s", "peak RSS GiB", "vs as shipped"],
        rows,
        {"runs": runs},
        args.out_dir,
        [
            f"{args.preset} {r['size']}, {r['tokens_per_step']} tokens/step, "
            f"dropout 0, median of {steps} steps; compare with TensorFlow's "
            "step_time"
        ],
    )


if __name__ == "__main__":
    main()
