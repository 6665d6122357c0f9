"""Model FLOP/s of the training step over the dense matmul FLOP/s that the
same process measures on the same machine. Target >= 0.5.

Model FLOPs are analytic (`benchmarks/flops.py`: every matmul and attention
einsum, x3 for forward + backward). The dense peak is the best of several
XLA-compiled square float32 matmuls (n = 1024, 2048, 4096), timed in this
process right before and after the train steps. Each train step runs in a
child process (`step_time.measure_isolated`, so that memory is returned
between presets) on the same machine, between the two matmul measurements.

    python -m benchmarks.utilisation [--quick] [--setting issue|scaled]
        [--loss-chunk-tokens 512]
"""

import time

import numpy as np

from benchmarks import common
from benchmarks import step_time


def matmul_flops_per_s(sizes=(1024, 2048, 4096), repeats=5, dtype="float32"):
    """Best FLOP/s of an XLA-compiled n x n x n matmul (chain of 4)."""
    import keras
    from keras import ops

    best = {}
    for n in sizes:
        rng = np.random.default_rng(n)
        a = ops.convert_to_tensor(rng.standard_normal((n, n)).astype(dtype) / n**0.5)
        b = ops.convert_to_tensor(rng.standard_normal((n, n)).astype(dtype))

        def chain(a, b):
            x = b
            for _ in range(4):
                x = ops.matmul(a, x)
            return x

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            fn = tf.function(chain, jit_compile=True)
        else:
            import jax

            fn = jax.jit(chain)
        common.block_until_ready(fn(a, b))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            common.block_until_ready(fn(a, b))
            times.append(time.perf_counter() - t0)
        best[n] = 4 * 2 * n**3 / min(times)
    return best


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--setting", default="issue", choices=["issue", "scaled"])
    parser.add_argument("--presets", default="rec_fixed_skip,slide_13")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--dropouts", default="0,0.05", help="dropout rates to measure (0.05 = presets)"
    )
    parser.add_argument(
        "--loss-chunk-tokens",
        type=int,
        default=None,
        help="the backbone's opt-in loss_chunk_tokens (the loss computed this many "
        "positions at a time; same loss and gradients, same FLOPs)",
    )
    parser.add_argument(
        "--query-chunk-size",
        type=int,
        default=None,
        help="the backbone's query_chunk_size (default: the model's, W / 4 for W >= "
        "256; W = the reference's [W, 2W] attention tiles, same FLOPs "
        "counted either way)",
    )
    args = parser.parse_args(argv)
    setting = "quick" if args.quick else args.setting
    size, window, tokens = step_time.SETTINGS[setting]
    if args.quick:
        args.steps = 2
    sizes = (256, 512) if args.quick else (1024, 2048, 4096)

    before = matmul_flops_per_s(sizes)
    rows, results = [], []
    for dropout in [float(v) for v in args.dropouts.split(",")]:
        for variant in args.presets.split(","):
            common.log(f"[utilisation] {variant} {size} W={window} dropout {dropout}")
            r = step_time.measure_isolated(
                variant,
                size,
                window,
                tokens,
                args.steps,
                args.seed,
                dropout,
                chunk=args.loss_chunk_tokens,
                query_chunk_size=args.query_chunk_size,
            )
            if "error" in r:
                common.log(f"  failed: {r['error']}")
                continue
            results.append(r)
    after = matmul_flops_per_s(sizes)
    peak = max(max(before.values()), max(after.values()))
    for r in results:
        model_flops = r["model_tflops_per_step"] * 1e12
        r["model_flops_per_s"] = model_flops / r["step_s"]
        r["best_model_flops_per_s"] = model_flops / r["step_min_s"]
        r["utilisation"] = r["model_flops_per_s"] / peak
        rows.append(
            [
                r["variant"],
                size,
                f"{r['segment']}x{r['batch']}",
                r["step_s"],
                r["model_tflops_per_step"],
                r["model_flops_per_s"] / 1e9,
                peak / 1e9,
                r["utilisation"],
            ]
        )
    util = {f"{r['variant']} dropout {r['dropout']}": r["utilisation"] for r in results}
    notes = [
        f"{v}: utilisation {u:.3f} (issue 5 target >= 0.5: "
        f"{'met' if u >= 0.5 else 'NOT met'}; issue 12 target >= 0.75: "
        f"{'met' if u >= 0.75 else 'NOT met'})"
        for v, u in util.items()
    ]
    if args.loss_chunk_tokens:
        notes.append(f"loss_chunk_tokens={args.loss_chunk_tokens}")
    notes.append(
        "attention query chunks: "
        + ", ".join(sorted({str(r["query_chunk_size"]) for r in results}))
        + " (the model FLOPs count [W, 2W] tiles whatever the chunk)"
    )
    notes.append(
        "dense matmul GFLOP/s by n, before: "
        + ", ".join(f"{n}: {f / 1e9:.0f}" for n, f in before.items())
        + "; after: "
        + ", ".join(f"{n}: {f / 1e9:.0f}" for n, f in after.items())
    )
    fig, ax = common.new_figure()
    labels = [f"{r['variant']}\ndropout {r['dropout']}" for r in results]
    ax.bar(labels, [r["model_flops_per_s"] / 1e9 for r in results], label="model")
    ax.axhline(peak / 1e9, color="k", ls="--", label="dense matmul peak")
    ax.axhline(0.5 * peak / 1e9, color="r", ls=":", label="target (50%)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"Training-step utilisation, {size}, {tokens} tokens/step")
    ax.legend()
    png = common.save_figure(fig, "utilisation", args.out_dir)
    common.report(
        "utilisation",
        "Training-step FLOP/s vs dense matmul FLOP/s",
        [
            "preset",
            "size",
            "L x B",
            "step s",
            "model TFLOP/step",
            "model GFLOP/s",
            "matmul GFLOP/s",
            "utilisation",
        ],
        rows,
        {
            "setting": setting,
            "matmul_before": before,
            "matmul_after": after,
            "peak_flops_per_s": peak,
            "results": results,
            "plot": png,
        },
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
