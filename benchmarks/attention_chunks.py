"""The sliding-window attention core per query chunk size.

A token attends to the W tokens before it. The reference scores each block
of W queries against the 2W keys of its own and the previous block (one
`[W, 2W]` tile, half of it masked); `query_chunk_size` C scores chunks of C
queries against the W + C keys their windows span, so a tile holds
(W + C) / 2W of the logits. This times the core's forward + backward
(gradients w.r.t. queries, keys, values, the bias table and temperature) of `SlidingWindowAttention`
per C, compiled by the active backend, at the issue's sizes (H = 8, Dh =
64, 4096 tokens) for W = 512 and W = 2048 (`xl_2048`'s window). GFLOP/s
count the reference's `[W, 2W]` tiles' FLOPs (as `benchmarks/utilisation`
does), so a smaller tile shows as a higher rate; "x" is the speed-up over
C = W.

    taskset -c 1 python -m benchmarks.attention_chunks [--quick]
"""

import numpy as np

from benchmarks import common


def core_fn(attention, previous):
    """Compiled `(q, k, v) -> (sum(y^2), gradients)` of the attention core:
    gradients w.r.t. queries, keys, values and the layer's own variables
    (T5 bias table, temperature), as a training step computes them."""
    from keras import ops

    if common.backend() == "jax":
        import jax

        trainable = [v.value for v in attention.trainable_variables]
        fixed = [v.value for v in attention.non_trainable_variables]

        def loss(weights, q, k, v):
            y, _ = attention.stateless_call(weights, fixed, q, k, v, previous, previous)
            return ops.sum(y * y)

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
        return lambda q, k, v: step(trainable, q, k, v)
    import tensorflow as tf

    def step(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            y = attention(q, k, v, previous, previous)
            value = ops.sum(y * y)
        return value, tape.gradient(value, [q, k, v] + attention.trainable_variables)

    return tf.function(step, jit_compile=True)


def best_ms(fn, args, repeats):
    common.block_until_ready(fn(*args))
    times = [common.timed(fn, *args)[0] for _ in range(repeats)]
    return 1e3 * min(times), 1e3 * float(np.median(times))


def rows_for(window, chunks, heads, head_dim, length, repeats):
    import keras

    from brt_keras.layers.sliding_window_attention import SlidingWindowAttention

    rng = np.random.default_rng(0)

    def unit(*shape):
        x = rng.normal(size=shape).astype("float32")
        return keras.ops.convert_to_tensor(
            x / np.linalg.norm(x, axis=-1, keepdims=True)
        )

    q, k, v = (unit(1, length, heads, head_dim) for _ in range(3))
    previous = unit(1, window, heads, head_dim)
    flops = 3 * 2 * 2 * (2 * window) * heads * head_dim * length
    rows, base, reference, weights = [], None, None, None
    for c in chunks:
        attention = SlidingWindowAttention(heads, window, query_chunk_size=c)
        # Same bias table and temperatures for every C.
        weights = weights or attention.get_weights()
        attention.set_weights(weights)
        fn = core_fn(attention, previous)
        value = float(common.block_until_ready(fn(q, k, v))[0])
        reference = value if reference is None else reference
        best, median = best_ms(fn, (q, k, v), repeats)
        base = base or best
        common.log(f"  W={window} C={c}: {best:.1f} ms")
        rows.append(
            [
                window,
                c,
                (window + c) / (2 * window),
                best,
                median,
                flops / best / 1e6,
                base / best,
                abs(value - reference) / abs(reference),
            ]
        )
    return rows


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    if args.quick:
        settings, heads, head_dim, length, repeats = [(16, (16, 8, 4))], 2, 8, 64, 2
    else:
        settings = [(512, (512, 256, 128, 64)), (2048, (2048, 512, 256, 128))]
        heads, head_dim, length, repeats = 8, 64, 4096, 5
    rows = []
    for window, chunks in settings:
        rows += rows_for(window, chunks, heads, head_dim, length, repeats)
    fig, ax = common.new_figure()
    for window, _ in settings:
        mine = [r for r in rows if r[0] == window]
        ax.plot([r[1] for r in mine], [r[3] for r in mine], "o-", label=f"W = {window}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("query_chunk_size C (C = W: the reference's [W, 2W] tile)")
    ax.set_ylabel("ms, forward + backward (best)")
    ax.set_title(f"Attention core, {length} tokens, H={heads}, Dh={head_dim}")
    ax.legend()
    png = common.save_figure(fig, "attention_chunks", args.out_dir)
    common.report(
        "attention_chunks",
        f"Sliding-window attention core, forward + backward ({common.backend()})",
        [
            "W",
            "C",
            "logits vs [W, 2W]",
            "best ms",
            "median ms",
            "GFLOP/s ([W, 2W] FLOPs)",
            "x vs C = W",
            "rel. diff of sum(y^2)",
        ],
        rows,
        {"plot": png, "length": length, "heads": heads, "head_dim": head_dim},
        args.out_dir,
        [
            "query_chunk_size=None (the default) picks W / 4 for W >= 256.",
            "The last column: the loss differs from C = W by float round-off only.",
        ],
    )


if __name__ == "__main__":
    main()
