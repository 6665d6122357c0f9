"""Why low-precision decoding is not faster on XLA:CPU: one matrix-vector
product per weight format, compiled by the active backend.

Batch-1 decoding is a chain of `[1, d] @ [d, n]` products, bound by reading
the weights, so int8 weights (1 byte) should be up to 4x faster than
float32 (4 bytes). This isolates the product itself at `small_37m`'s FFN
shape (512 x 2048, `--matrices` of them per call, as a decode step reads
~36 such matrices) and reports ms and effective GB/s per form:

- float32 `x @ W` (XLA calls its Eigen/oneDNN matrix-vector kernel);
- int8 weight-only as Keras computes it (`x @ cast(W_int8)`, scale after);
- int8 dequantised first (`x @ (cast(W_int8) * scale)`);
- Keras' default int8 (`quantize(x) @ W_int8` in int32, rescaled);
- bfloat16 `x @ W_bf16` (bfloat16 compute) and `x @ cast(W_bf16)`;
- the int8 -> float32 conversion alone (summed, so it cannot be elided).

    taskset -c 1 python -m benchmarks.quant_matvec [--quick]
"""

import numpy as np

from benchmarks import common


def compile_fn(fn):
    if common.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def forms(ops):
    def f32(x, ws, s):
        return [ops.matmul(x, w) for w in ws]

    def int8_keras_weight_only(x, ws, s):
        return [ops.matmul(x, ops.cast(w, "float32")) / s for w in ws]

    def int8_dequantised(x, ws, s):
        return [ops.matmul(x, ops.cast(w, "float32") / s) for w in ws]

    def int8_keras_default(x, ws, s):
        amax = ops.max(ops.abs(x), axis=-1, keepdims=True)
        xs = 127.0 / ops.maximum(amax, 1e-7)
        xq = ops.cast(ops.round(x * xs), "int8")
        return [ops.cast(ops.matmul(xq, w), "float32") / (s * xs) for w in ws]

    def bf16_compute(x, ws, s):
        return [ops.matmul(ops.cast(x, "bfloat16"), w) for w in ws]

    def bf16_upcast(x, ws, s):
        return [ops.matmul(x, ops.cast(w, "float32")) for w in ws]

    # Written as multiply + reduce instead of a dot, XLA fuses the int8 ->
    # float32 convert into one loop that reads each int8 weight once (a dot
    # needs both operands in float32, so the convert is materialised first).
    def int8_fused_reduce(x, ws, s):
        return [
            ops.sum(ops.expand_dims(x[0], 1) * ops.cast(w, "float32"), axis=0) / s
            for w in ws
        ]

    def int8_fused_reduce_transposed(x, ws, s):
        # W stored [n, d]: each output reduces one contiguous row.
        return [ops.sum(x * ops.cast(w, "float32"), axis=1) / s for w in ws]

    def bf16_fused_reduce(x, ws, s):
        return [
            ops.sum(ops.expand_dims(x[0], 1) * ops.cast(w, "float32"), axis=0)
            for w in ws
        ]

    def int8_convert_only(x, ws, s):
        return [ops.sum(ops.cast(w, "float32"), axis=0) for w in ws]

    return {
        "float32 x @ W": (f32, "float32"),
        "int8, Keras weight-only: x @ cast(W) / s": (int8_keras_weight_only, "int8"),
        "int8, dequantised first: x @ (cast(W) / s)": (int8_dequantised, "int8"),
        "int8, Keras default (int8 x int8 -> int32)": (int8_keras_default, "int8"),
        "bfloat16 compute: bf16(x) @ W": (bf16_compute, "bfloat16"),
        "bfloat16 weights, float32 compute": (bf16_upcast, "bfloat16"),
        "int8, fused multiply-reduce: sum(x * cast(W), 0) / s": (
            int8_fused_reduce,
            "int8",
        ),
        "int8, fused multiply-reduce, W transposed": (
            int8_fused_reduce_transposed,
            "int8_t",
        ),
        "bfloat16, fused multiply-reduce": (bf16_fused_reduce, "bfloat16"),
        "int8 -> float32 convert only": (int8_convert_only, "int8"),
    }


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--matrices", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.cols, args.matrices, args.repeats = 128, 256, 2, 3
    from keras import ops

    rng = np.random.default_rng(args.seed)
    shape = (args.rows, args.cols)
    floats = [
        rng.standard_normal(shape).astype("float32") for _ in range(args.matrices)
    ]
    scale = 127.0 / np.abs(floats[0]).max(0)
    weights = {
        "float32": [ops.convert_to_tensor(w) for w in floats],
        "int8": [
            ops.convert_to_tensor(
                np.clip(np.round(w * scale), -127, 127).astype("int8")
            )
            for w in floats
        ],
        "bfloat16": [ops.cast(w, "bfloat16") for w in floats],
    }
    weights["int8_t"] = [ops.transpose(w) for w in weights["int8"]]
    x = ops.convert_to_tensor(rng.standard_normal((1, args.rows)).astype("float32"))
    s = ops.convert_to_tensor(scale.astype("float32"))
    table = forms(ops)
    compiled = {name: compile_fn(fn) for name, (fn, _) in table.items()}
    for name, (_, fmt) in table.items():
        common.block_until_ready(compiled[name](x, weights[fmt], s))
    times = {name: [] for name in table}
    # Round-robin, so machine load hits every form alike; best of repeats.
    for _ in range(args.repeats):
        for name, (_, fmt) in table.items():
            times[name].append(common.timed(compiled[name], x, weights[fmt], s)[0])
    best_f32 = min(times["float32 x @ W"])
    rows, results = [], []
    elements = args.rows * args.cols * args.matrices
    for name, (_, fmt) in table.items():
        best = min(times[name])
        itemsize = {"bfloat16": 2, "int8_t": 1}.get(fmt) or np.dtype(fmt).itemsize
        nbytes = elements * itemsize
        r = {
            "form": name,
            "weights": fmt,
            "best_ms": 1e3 * best,
            "median_ms": 1e3 * float(np.median(times[name])),
            "vs_float32": best / best_f32,
            "weight_gb_per_s": nbytes / best / 1e9,
        }
        results.append(r)
        rows.append(
            [
                name,
                fmt,
                r["best_ms"],
                r["median_ms"],
                r["vs_float32"],
                r["weight_gb_per_s"],
            ]
        )
    notes = [
        f"{args.matrices} matrices of {args.rows} x {args.cols}, x [1, {args.rows}], "
        f"best and median of {args.repeats} calls, {common.backend()} (XLA)",
        "a form is worth it for decoding only if its time is below float32's "
        "(target: int8 <= 0.35x, bfloat16 <= 0.6x)",
    ]
    fig, ax = common.new_figure(width=8)
    ax.barh([r["form"] for r in results], [r["vs_float32"] for r in results])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("time / float32 matrix-vector product")
    png = common.save_figure(fig, "quant_matvec", args.out_dir)
    common.report(
        "quant_matvec",
        "Matrix-vector product by weight format (XLA:CPU)",
        ["form", "weights", "best ms", "median ms", "vs float32", "weight GB/s"],
        rows,
        {"results": results, "plot": png},
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
