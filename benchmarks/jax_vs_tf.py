"""Where JAX's training step on XLA:CPU loses time against TensorFlow's.

The same components of the `small_37m` step at the issue's sizes (d=512,
H=8, Dh=64, F=2048, W=512, S=512, 4096 tokens), each forward+backward
(gradients for the inputs and every weight), compiled by XLA under each
backend: JAX (`jax.jit` of `jax.grad` over a `keras.StatelessScope`) and
TensorFlow (`tf.function(jit_compile=True)` over a `GradientTape`).

- a dense matmul [4096, 512] @ [512, 2048] (an FFN projection);
- the elementwise exp of an attention tile batch [8, 4096, 1024];
- the attention core (`SlidingWindowAttention`, W x 2W tiles);
- one `SlidingWindowLayer` and one `BlockRecurrentLayer` (fixed gate, skip);
- the dense matmul's three products taken apart, forward only (`--only
  dots` runs just these): the forward `x @ W`, the input gradient `g @ W^T`,
  the weight gradient `x^T @ g` (contracting the 4096 tokens, the major
  dimension of both operands), and that product with `x^T` given as a
  row-major input (what a materialised transpose gives). This is the
  minimal reproducer of JAX's gap: XLA:CPU under JAX runs a dot whose left
  operand is transposed at about half the speed of TensorFlow's XLA, or of
  its own dot on the transposed copy; the other two products are on par.

Each backend runs in its own subprocess (a Keras process has one backend),
pinned to the caller's cores; the table gives best-of-N ms and JAX / TF.
`--jax-flags` runs JAX again under extra `XLA_FLAGS` (one column each).

    taskset -c 1 python -m benchmarks.jax_vs_tf [--quick] \\
        [--jax-flags=--xla_cpu_enable_fast_math=true]
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import common

COMPONENTS = (
    "dense matmul 4096x512 @ 512x2048",
    "exp [8, 4096, 1024]",
    "attention core",
    "SlidingWindowLayer",
    "BlockRecurrentLayer",
)
STEP_PARTS = (
    "readout + loss (fwd+bwd)",
    "readout + loss, loss_chunk_tokens=512",
    "embedding lookup (fwd+bwd)",
    "Adafactor apply (all small_37m variables)",
)
DOTS = (
    "x @ W (forward)",
    "g @ W^T (input gradient)",
    "x^T @ g (weight gradient)",
    "x^T @ g, x^T given row-major",
)


def gradient_fn(forward, variables):
    """Compiled `grads = g(*inputs)` of `sum(forward(*inputs) ** 2)` with
    respect to the inputs and `variables`."""
    import keras

    if common.backend() == "jax":
        import jax

        def loss(values, inputs):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                y = forward(*inputs)
            return keras.ops.sum(keras.ops.square(y))

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return lambda *inputs: grad([v.value for v in variables], inputs)
    import tensorflow as tf

    def g(*inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = forward(*inputs)
            loss = tf.reduce_sum(tf.square(y))
        return tape.gradient(loss, [*inputs, *variables])

    return tf.function(g, jit_compile=True)


def best_ms(fn, args, repeats):
    common.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        common.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def compiled(fn):
    """`fn` XLA-compiled by this process' backend (no gradient)."""
    if common.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def measure_dots(quick, repeats):
    """The three products of a dense layer's forward+backward, apart (ms)."""
    from keras import ops

    d, f, length = (64, 128, 256) if quick else (512, 2048, 4096)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((length, d)).astype("float32")
    w = rng.standard_normal((d, f)).astype("float32")
    g = rng.standard_normal((length, f)).astype("float32")
    x_t = np.ascontiguousarray(x.T)
    cases = (
        (lambda a, b: ops.matmul(a, b), x, w),
        (lambda a, b: ops.matmul(a, ops.transpose(b)), g, w),
        (lambda a, b: ops.matmul(ops.transpose(a), b), x, g),
        (lambda a, b: ops.matmul(a, b), x_t, g),
    )
    out = {}
    for name, (fn, a, b) in zip(DOTS, cases):
        args = [ops.convert_to_tensor(a), ops.convert_to_tensor(b)]
        out[name] = best_ms(compiled(fn), args, repeats)
    return out


def measure_step_parts(quick, repeats):
    """The step's parts outside the layers (ms): the tied readout with the
    loss, the embedding lookup, the optimizer update."""
    import math

    import keras
    from keras import ops

    from brt_keras.layers.readout import tied_readout_loss

    n, d, v = (256, 64, 512) if quick else (4096, 512, 32128)
    rng = np.random.default_rng(0)
    embedding = keras.layers.Embedding(v, d)
    embedding.build((None,))
    table = embedding.embeddings
    ids = ops.convert_to_tensor(rng.integers(1, v, (n,)).astype("int32"))
    hidden = ops.convert_to_tensor(rng.standard_normal((n, d)).astype("float32"))

    def readout(x):
        logits = ops.matmul(x, ops.transpose(table)) / math.sqrt(v)
        ce = ops.sparse_categorical_crossentropy(ids, logits, from_logits=True)
        # gradient_fn squares the output: a root keeps it the mean loss's.
        return ops.sqrt(ops.mean(ce))

    def chunked(x):
        weights = ops.ones((n,))
        total = tied_readout_loss(embedding, x, ids, weights, math.sqrt(v), 512)
        return ops.sqrt(total / n)

    out = {
        STEP_PARTS[0]: best_ms(gradient_fn(readout, [table]), [hidden], repeats),
        STEP_PARTS[1]: best_ms(gradient_fn(chunked, [table]), [hidden], repeats),
        STEP_PARTS[2]: best_ms(
            gradient_fn(lambda: ops.take(table, ids, axis=0), [table]), [], repeats
        ),
    }
    lm = common.build_lm("rec_fixed_skip", "tiny" if quick else "small_37m")
    variables = lm.trainable_variables
    optimizer = keras.optimizers.Adafactor(learning_rate=0.01)
    optimizer.build(variables)
    grads = [ops.full(x.shape, 1e-3, "float32") for x in variables]
    if common.backend() == "jax":
        import jax

        apply = jax.jit(lambda w, o, g: optimizer.stateless_apply(o, g, w))
        args = [[x.value for x in variables], [x.value for x in optimizer.variables]]
        out[STEP_PARTS[3]] = best_ms(apply, args + [grads], repeats)
    else:
        import tensorflow as tf

        apply = tf.function(
            lambda g: optimizer.apply_gradients(zip(g, variables)), jit_compile=True
        )
        out[STEP_PARTS[3]] = best_ms(
            lambda g: (apply(g), variables[0].value)[1], [grads], repeats
        )
    return out


def measure(quick, repeats, only=None):
    import keras
    from keras import ops

    if only in ("dots", "step-parts"):
        parts = measure_dots if only == "dots" else measure_step_parts
        out = parts(quick, repeats)
        for name, ms in out.items():
            common.log(f"  [{common.backend()}] {name}: {ms:.1f} ms")
        return out

    from brt_keras.layers.block_recurrent_layer import BlockRecurrentLayer
    from brt_keras.layers.sliding_window_attention import SlidingWindowAttention
    from brt_keras.layers.sliding_window_layer import SlidingWindowLayer

    d, h, dh, f, w, s, length = (
        (64, 2, 32, 128, 32, 32, 256) if quick else (512, 8, 64, 2048, 512, 512, 4096)
    )
    rng = np.random.default_rng(0)

    def normal(*shape):
        return ops.convert_to_tensor(rng.standard_normal(shape).astype("float32"))

    keras.utils.set_random_seed(0)
    out = {}
    kernel = keras.Variable(normal(d, f))
    out[COMPONENTS[0]] = best_ms(
        gradient_fn(lambda x: ops.matmul(x, kernel), [kernel]),
        [normal(length, d)],
        repeats,
    )
    out[COMPONENTS[1]] = best_ms(
        gradient_fn(lambda x: ops.exp(x), []), [normal(h, length, 2 * w) * 0.1], repeats
    )
    attention = SlidingWindowAttention(h, w)
    prev = ops.zeros((1, w, h, dh))
    qkv = [
        ops.convert_to_tensor(
            np.asarray(keras.ops.normalize(normal(1, length, h, dh), axis=-1))
        )
        for _ in range(3)
    ]
    out[COMPONENTS[2]] = best_ms(
        gradient_fn(lambda q, k, v: attention(q, k, v, prev, prev), []), qkv, repeats
    )
    for name, layer in (
        (
            COMPONENTS[3],
            SlidingWindowLayer(d, h, dh, f, block_size=w, dropout=0.0),
        ),
        (
            COMPONENTS[4],
            BlockRecurrentLayer(d, h, dh, f, block_size=w, num_states=s, dropout=0.0),
        ),
    ):
        x = normal(1, length, d)
        state = layer.get_initial_state(1)
        layer.call_with_state(x, state)  # build

        def forward(x, layer=layer, state=state):
            y, _ = layer.call_with_state(x, state, training=True)
            return y

        out[name] = best_ms(
            gradient_fn(forward, layer.trainable_variables), [x], repeats
        )
    for name, ms in out.items():
        common.log(f"  [{common.backend()}] {name}: {ms:.1f} ms")
    return out


def run_backend(backend, xla_flags, quick, repeats, only=None):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
        + [p for p in [env.get("PYTHONPATH")] if p]
    )
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    else:
        env.pop("XLA_FLAGS", None)
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        cmd = [sys.executable, "-m", "benchmarks.jax_vs_tf", "--worker", tmp.name]
        cmd += ["--repeats", str(repeats)] + (["--quick"] if quick else [])
        cmd += ["--only", only] if only else []
        subprocess.run(cmd, env=env, check=True)
        with open(tmp.name) as f:
            return json.load(f)


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--jax-flags",
        action="append",
        default=[],
        help="extra XLA_FLAGS for another JAX column (repeatable)",
    )
    parser.add_argument(
        "--only",
        choices=["dots", "step-parts"],
        default=None,
        help="dots: only the dense matmul's three products, forward only; "
        "step-parts: the readout with the loss, the embedding, the optimizer",
    )
    parser.add_argument("--worker", help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.worker:
        with open(args.worker, "w") as f:
            json.dump(measure(args.quick, args.repeats, args.only), f)
        return
    run = (args.quick, args.repeats, args.only)
    columns = {"tensorflow": run_backend("tensorflow", "", *run)}
    columns["jax"] = run_backend("jax", "", *run)
    for flags in args.jax_flags:
        columns[f"jax {flags}"] = run_backend("jax", flags, *run)
    names = list(columns)
    rows = []
    listed = {"dots": DOTS, "step-parts": STEP_PARTS}.get(args.only, COMPONENTS)
    for component in listed:
        tf_ms = columns["tensorflow"][component]
        row = [component] + [columns[n][component] for n in names]
        row += [columns[n][component] / tf_ms for n in names[1:]]
        rows.append(row)
    kind = "product (forward only)" if args.only == "dots" else "component"
    headers = [kind] + [f"{n} ms" for n in names]
    headers += [f"{n} / TF" for n in names[1:]]
    common.report(
        "jax_vs_tf",
        "JAX vs TensorFlow on XLA:CPU, by component of the training step",
        headers,
        rows,
        {"columns": columns, "quick": args.quick, "only": args.only},
        args.out_dir,
        [
            "issue sizes: d=512, H=8, Dh=64, F=2048, W=512, S=512, 4096 tokens; "
            f"best of {args.repeats}; both backends XLA-compiled on this CPU"
        ],
    )


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
