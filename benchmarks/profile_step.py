"""Timing breakdown behind the step-time and utilisation gaps.

1. One layer at the issue's sizes (d=512, H=8, Dh=64, F=2048, W=512, S=512,
   4096 tokens): `SlidingWindowLayer` vs `BlockRecurrentLayer` (fixed,
   skip), forward and forward+backward, XLA-compiled, with dropout 0.05 (the
   presets) and without.
2. The random-number cost behind dropout under XLA on this CPU: a
   [1, 4096, 512] uniform draw through Keras (`keras.random.uniform` with a
   `SeedGenerator`, what `keras.layers.Dropout` does), through
   `tf.random.stateless_uniform` with a variable seed and the default
   algorithm (what Keras calls), with `alg="philox"` / `"threefry"`, and a
   (1, 128, d) mask tiled over the sequence (the reference's tiled dropout),
   and brt_keras' own `HashDropout` / `TiledDropout` (counter-hash masks).

TensorFlow backend only.

    python -m benchmarks.profile_step [--quick]
"""

import time

import numpy as np

from benchmarks import common


def best_ms(fn, *args, repeats=4):
    common.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        common.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times), 1e3 * float(np.median(times))


def layer_rows(sizes, repeats):
    import tensorflow as tf

    from brt_keras.layers.block_recurrent_layer import BlockRecurrentLayer
    from brt_keras.layers.sliding_window_layer import SlidingWindowLayer

    d, h, dh, f, w, s, length = sizes
    rows = []
    for dropout in (0.05, 0.0):
        layers = {
            "SlidingWindowLayer": SlidingWindowLayer(
                d, h, dh, f, block_size=w, dropout=dropout, attention_dropout=dropout
            ),
            "BlockRecurrentLayer": BlockRecurrentLayer(
                d,
                h,
                dh,
                f,
                block_size=w,
                num_states=s,
                dropout=dropout,
                attention_dropout=dropout,
            ),
        }
        for name, layer in layers.items():
            x = tf.random.normal((1, length, d))
            state = layer.get_initial_state(1)

            def fwd(x, state, layer=layer):
                y, _ = layer.call_with_state(x, state, training=True)
                return tf.reduce_sum(y)

            def fwd_bwd(x, state, layer=layer):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y, _ = layer.call_with_state(x, state, training=True)
                    loss = tf.reduce_sum(y * y)
                return tape.gradient(loss, [x] + layer.trainable_variables)

            for kind, fn in (("forward", fwd), ("forward+backward", fwd_bwd)):
                compiled = tf.function(fn, jit_compile=True)
                best, med = best_ms(compiled, x, state, repeats=repeats)
                common.log(f"  {name} dropout {dropout} {kind}: {best:.1f} ms")
                flops = None
                if name == "SlidingWindowLayer":
                    flops = 2 * (4 * d * h * dh + 2 * d * f) * length
                    flops += 2 * 2 * (2 * w) * h * dh * length
                    flops *= 3 if kind == "forward+backward" else 1
                rate = flops / best / 1e6 if flops else None
                rows.append([name, dropout, kind, best, med, rate])
    return rows


def component_rows(sizes, vocab, repeats):
    """Forward+backward of the attention core and of the readout + loss,
    with their model FLOPs, to show which parts run far below matmul speed."""
    import keras
    import tensorflow as tf

    from brt_keras.layers.sliding_window_attention import SlidingWindowAttention

    d, h, dh, f, w, s, length = sizes
    rows = []
    attention = SlidingWindowAttention(h, w)
    q, k, v = (
        tf.math.l2_normalize(tf.random.normal((1, length, h, dh)), -1) for _ in range(3)
    )
    prev = tf.zeros((1, w, h, dh))

    def attn(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            y = attention(q, k, v, prev, prev)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [q, k, v])

    best, med = best_ms(tf.function(attn, jit_compile=True), q, k, v, repeats=repeats)
    flops = 3 * 2 * 2 * (2 * w) * h * dh * length
    rows.append(["attention core (W x 2W tiles)", best, flops / best / 1e6])
    common.log(f"  attention core: {best:.1f} ms")

    emb = keras.Variable(tf.random.normal((vocab, d)))
    x = tf.random.normal((1, length, d))
    y = tf.random.uniform((1, length), 1, vocab, dtype=tf.int32)

    def readout(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = tf.matmul(x, emb.value, transpose_b=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            )
        return tape.gradient(loss, [x, emb.value])

    best, med = best_ms(tf.function(readout, jit_compile=True), x, y, repeats=repeats)
    flops = 3 * 2 * vocab * d * length
    rows.append(
        [f"tied readout + softmax cross-entropy (V={vocab})", best, flops / best / 1e6]
    )
    common.log(f"  readout + loss: {best:.1f} ms")
    return rows


def rng_rows(shape, repeats):
    import keras
    import tensorflow as tf

    from brt_keras.layers import HashDropout
    from brt_keras.layers import TiledDropout

    x = tf.random.normal(shape)
    seed_var = tf.Variable([3, 4], dtype=tf.int32)
    generator = keras.random.SeedGenerator(1)
    dropout = keras.layers.Dropout(0.05)
    hash_dropout = HashDropout(0.05)
    tiled_dropout = TiledDropout(0.05)
    tile = 128 if shape[1] % 128 == 0 else shape[1]

    def tiled(x):
        mask = keras.random.uniform((1, tile, shape[2]), seed=generator) >= 0.05
        reps = (1, shape[1] // tile, 1)
        return x * tf.tile(tf.cast(mask, x.dtype), reps) / 0.95

    cases = {
        "keras.layers.Dropout(0.05)": lambda x: dropout(x, training=True),
        "keras.random.uniform(SeedGenerator)": lambda x: (
            x * keras.random.uniform(shape, seed=generator)
        ),
        "tf stateless_uniform, variable seed, default alg": lambda x: (
            x * tf.random.stateless_uniform(shape, seed_var.read_value())
        ),
        "tf stateless_uniform, variable seed, alg=philox": lambda x: (
            x * tf.random.stateless_uniform(shape, seed_var.read_value(), alg="philox")
        ),
        "tf stateless_uniform, variable seed, alg=threefry": lambda x: (
            x
            * tf.random.stateless_uniform(shape, seed_var.read_value(), alg="threefry")
        ),
        f"keras mask (1, {tile}, d) tiled (reference's tiled dropout)": tiled,
        "brt_keras HashDropout(0.05) (attention dropout)": lambda x: hash_dropout(
            x, training=True
        ),
        "brt_keras TiledDropout(0.05) (hashed (1, 128, d) mask)": lambda x: (
            tiled_dropout(x, training=True)
        ),
    }
    rows = []
    for name, fn in cases.items():
        compiled = tf.function(lambda x, fn=fn: tf.reduce_sum(fn(x)), jit_compile=True)
        best, med = best_ms(compiled, x, repeats=repeats)
        common.log(f"  {name}: {best:.1f} ms")
        rows.append([name, str(tuple(shape)), best, med])
    return rows


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    if common.backend() != "tensorflow":
        raise SystemExit("profile_step needs KERAS_BACKEND=tensorflow")
    if args.quick:
        sizes, shape, repeats = (64, 4, 16, 128, 8, 8, 32), (1, 256, 64), 2
    else:
        sizes, shape, repeats = (512, 8, 64, 2048, 512, 512, 4096), (1, 4096, 512), 4
    common.log("[profile_step] layers ...")
    layers = layer_rows(sizes, repeats)
    common.log("[profile_step] components ...")
    components = component_rows(sizes, 260 if args.quick else 32128, repeats)
    common.log("[profile_step] random numbers ...")
    rng = rng_rows(shape, repeats)
    fig, axes = common.new_figure(ncols=2, width=6)
    labels = [f"{r[0][:8]} d={r[1]:g}\n{r[2]}" for r in layers]
    axes[0].barh(labels, [r[3] for r in layers])
    axes[0].set_xlabel("ms (best of repeats)")
    axes[0].set_title("One layer, XLA, 4096 tokens" if not args.quick else "One layer")
    axes[0].tick_params(axis="y", labelsize=7)
    axes[1].barh([r[0][:38] for r in rng], [r[2] for r in rng])
    axes[1].set_xscale("log")
    axes[1].set_xlabel("ms for one mask (log)")
    axes[1].set_title(f"Random numbers for a {shape} mask, XLA")
    axes[1].tick_params(axis="y", labelsize=7)
    png = common.save_figure(fig, "profile_step", args.out_dir)
    print("\n## Layer breakdown\n")
    print(
        common.format_table(
            ["layer", "dropout", "pass", "best ms", "median ms", "GFLOP/s"], layers
        )
    )
    print("\n## Components, forward + backward\n")
    print(common.format_table(["component", "best ms", "GFLOP/s"], components))
    common.report(
        "profile_step",
        "Random-number cost under XLA (what dropout pays)",
        ["draw", "shape", "best ms", "median ms"],
        rng,
        {
            "layer_sizes": sizes,
            "layers": layers,
            "components": components,
            "rng": rng,
            "plot": png,
        },
        args.out_dir,
        ["layer table: see 'layers' in the JSON"],
    )


if __name__ == "__main__":
    main()
