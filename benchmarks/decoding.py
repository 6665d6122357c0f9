"""Batched decoding speed by weight precision: float32, bfloat16, int8.

For each precision and batch size (1, 8, 32), the public `lm.generate`
(keras-hub's compiled decode loop over `call_with_cache`) continues random
prompts of one block plus one token, greedily; the time per decode step is
the difference between `--long` and `--short` new tokens (medians of
`--repeats`; the prompt's block is prefilled once and reused, as in
`generate_api`). Reported: ms per step, ms per token (step / batch) and
tokens/s. `--step-calls` times the Python-driven `decode_step` per token
instead (`generation.Decoder`: the cache goes in and out of each compiled
call, so every step copies it). Precisions, through Keras' own API:

- float32: the default.
- bfloat16: the model built under `keras.config.set_dtype_policy("bfloat16")`
  (bfloat16 weights and compute; the recurrent state stays float32).
- int8: `lm.quantize("int8")` (Keras' default int8: per-channel int8
  weights, per-token int8 activations).

Targets (issue 12): int8 batch 1 <= 0.35x the float32 time, bfloat16 <=
0.6x; batch 32 >= 20x the tokens/s of batch 1 (float32). For float32 it
also measures each batch's floor (`decode_floor`: the model's weight
matmuls at that batch plus one read of its decode cache), which bounds the
batch-32 / batch-1 ratio this machine can reach. Pin it to a core:

    taskset -c 1 python -m benchmarks.decoding [--quick] [--batches 1,8,32]
"""

import numpy as np

from benchmarks import common
from benchmarks.generate_api import ms_per_token
from benchmarks.generate_api import reuse_prefill
from benchmarks.generation import Decoder

PRECISIONS = ("float32", "bfloat16", "int8")


def at_precision(make_lm, precision):
    """`make_lm()` in `precision`: "float32", "bfloat16" (built under the
    bfloat16 dtype policy) or "int8" (Keras' weight-only `quantize`)."""
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if precision == "bfloat16":
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("bfloat16")
        try:
            return make_lm()
        finally:
            keras.config.set_dtype_policy(previous)
    lm = make_lm()
    if precision == "int8":
        lm.quantize("int8")
    return lm


def build(variant, size, precision, seed):
    import keras

    keras.utils.set_random_seed(seed)
    return at_precision(lambda: common.build_lm(variant, size), precision)


def weight_bytes(lm):
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in lm.weights)


def decode_floor(lm, batch, repeats=5):
    """The two costs no float32 decode step at `batch` avoids, each timed
    alone in this process: every weight matrix a token passes through
    applied to a `[batch, n]` input (the matmuls alone: weight traffic and
    FLOPs), and one read of every decode-cache tensor at `batch` (a
    reduction over the rings, states and buffers; each step attends to all
    of them). Timed alone, not inside the decode loop, so the loop can come
    out slightly below it (XLA fuses differently there).
    Returns `(weights_ms, cache_ms, cache_bytes)`."""
    import keras
    from keras import ops

    from benchmarks.quant_matvec import compile_fn

    mats, transposed = [], []
    embedding = lm.backbone.token_embedding.embeddings
    for v in lm.weights:
        shape = tuple(int(d) for d in v.shape)
        per_block = "/state_" in v.path or v.path.endswith("initial_state")
        if len(shape) < 2 or int(np.prod(shape)) < 65536 or per_block:
            # Bias tables, norms, gates: negligible traffic; the recurrent
            # state's projections run once per block, not per token.
            continue
        m = keras.ops.convert_to_numpy(v.value).astype("float32")
        # The tied readout reads the `[V, d]` table as `x @ E^T`, as the
        # model does (`tied_readout`: a dot contracting E's second axis).
        mats.append(m if v is embedding else m.reshape(shape[0], -1))
        transposed.append(v is embedding)
    rng = np.random.default_rng(0)
    xs = [
        rng.standard_normal((batch, m.shape[1] if t else m.shape[0]))
        for m, t in zip(mats, transposed)
    ]
    weights = [ops.convert_to_tensor(m) for m in mats]
    inputs = [ops.convert_to_tensor(x.astype("float32")) for x in xs]

    @compile_fn
    def matmuls(inputs, weights):
        return [
            ops.sum(ops.matmul(x, ops.transpose(w) if t else w))
            for x, w, t in zip(inputs, weights, transposed)
        ]

    cache = lm.decode_cache(lm.get_initial_state(batch))
    leaves = [
        ops.convert_to_tensor(rng.standard_normal(tuple(leaf.shape)).astype("float32"))
        for leaf in keras.tree.flatten(cache)
        if len(leaf.shape) >= 2
    ]
    cache_bytes = sum(int(np.prod(leaf.shape)) * 4 for leaf in leaves)

    @compile_fn
    def read(leaves):
        return [ops.sum(leaf) for leaf in leaves]

    def best(fn, *args):
        common.block_until_ready(fn(*args))  # compile
        return 1e3 * min(common.timed(fn, *args)[0] for _ in range(repeats))

    return best(matmuls, inputs, weights), best(read, leaves), cache_bytes


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", default="small_37m")
    parser.add_argument("--preset", default="rec_fixed_skip")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--short", type=int, default=4)
    parser.add_argument("--long", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--step-calls",
        action="store_true",
        help="time one compiled decode_step call per token instead of lm.generate",
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the float32 floor (weight matmuls + one read of the cache)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.short, args.long, args.repeats = "tiny", 2, 6, 1
    args.new_tokens = args.long - args.short
    batches = [int(b) for b in args.batches.split(",")]
    precisions = args.precisions.split(",")
    rows, results = [], []
    for precision in precisions:
        lm = build(args.preset, args.size, precision, args.seed)
        common.log(f"[decoding] {precision}: {weight_bytes(lm) / 2**20:.1f} MiB")
        reuse_prefill(lm)
        for batch in batches:
            if args.step_calls:
                context = lm.backbone.block_size
                decoder = Decoder(lm, context, args.seed, batch)
                for _ in range(args.new_tokens):
                    decoder.step()
                step_ms = 1e3 * float(np.median(decoder.times))
            else:
                context = lm.backbone.block_size + 1
                step_ms, _ = ms_per_token(
                    lm, context, args.short, args.long, args.repeats, args.seed, batch
                )
            r = {
                "precision": precision,
                "batch": batch,
                "step_ms": step_ms,
                "path": "decode_step calls" if args.step_calls else "lm.generate",
                "ms_per_token": step_ms / batch,
                "tokens_per_s": 1e3 * batch / step_ms,
                "weight_mib": weight_bytes(lm) / 2**20,
                "new_tokens": args.new_tokens,
                "context": context,
            }
            if args.floor and precision == "float32":
                weights_ms, cache_ms, cache_bytes = decode_floor(lm, batch)
                r.update(
                    floor_weights_ms=weights_ms,
                    floor_cache_ms=cache_ms,
                    floor_ms=weights_ms + cache_ms,
                    cache_mib=cache_bytes / 2**20,
                )
                common.log(
                    f"  batch {batch} floor: weight matmuls {weights_ms:.2f} ms + "
                    f"cache read {cache_ms:.2f} ms ({cache_bytes / 2**20:.0f} MiB)"
                )
            results.append(r)
            common.log(
                f"  batch {batch}: {step_ms:.2f} ms/step, "
                f"{r['tokens_per_s']:.1f} tokens/s"
            )
    base = {r["batch"]: r for r in results if r["precision"] == "float32"}
    for r in results:
        ref = base.get(r["batch"])
        r["time_vs_float32"] = r["step_ms"] / ref["step_ms"] if ref else float("nan")
        rows.append(
            [
                r["precision"],
                r["batch"],
                r["weight_mib"],
                r["step_ms"],
                r["ms_per_token"],
                r["tokens_per_s"],
                r["time_vs_float32"],
                r.get("floor_ms", float("nan")),
            ]
        )
    notes = []

    def target(label, value, limit, lower_is_better=True):
        ok = value <= limit if lower_is_better else value >= limit
        sign = "<=" if lower_is_better else ">="
        notes.append(
            f"{label}: {value:.3g} (target {sign} {limit}: "
            f"{'met' if ok else 'NOT met'})"
        )

    def find(precision, batch):
        return next(
            (r for r in results if r["precision"] == precision and r["batch"] == batch),
            None,
        )

    for precision, limit in (("int8", 0.35), ("bfloat16", 0.6)):
        r = find(precision, 1)
        if r is not None and 1 in base:
            target(f"{precision} batch 1 time / float32", r["time_vs_float32"], limit)
    for precision in precisions:
        one, many = find(precision, 1), find(precision, max(batches))
        if one and many and max(batches) > 1:
            target(
                f"{precision} tokens/s batch {max(batches)} / batch 1",
                many["tokens_per_s"] / one["tokens_per_s"],
                20,
                lower_is_better=False,
            )
    floors = [r for r in results if "floor_ms" in r]
    if floors and 1 in base and "floor_ms" in base[1]:
        one = base[1]
        for r in floors:
            b = r["batch"]
            notes.append(
                f"float32 batch {b} floor: weight matmuls {r['floor_weights_ms']:.1f}"
                f" ms + one read of the {r['cache_mib']:.0f} MiB cache "
                f"{r['floor_cache_ms']:.1f} ms = {r['floor_ms']:.1f} ms/step "
                f"(measured {r['step_ms']:.1f}); batch {b} / batch 1 tokens/s "
                f"allowed by the floors: {b * one['floor_ms'] / r['floor_ms']:.1f}x"
            )
    notes.append(
        f"{args.preset} {args.size}, prompt {results[0]['context'] if results else '?'}"
        f" tokens, {results[0]['path'] if results else ''}: "
        + (
            f"median of {args.new_tokens} decode_step calls"
            if args.step_calls
            else f"(t({args.long} new) - t({args.short} new)) / {args.new_tokens}, "
            f"medians of {args.repeats}"
        )
    )
    fig, axes = common.new_figure(2, width=5.5)
    for precision in precisions:
        rs = [r for r in results if r["precision"] == precision]
        axes[0].plot(
            [r["batch"] for r in rs],
            [r["tokens_per_s"] for r in rs],
            "o-",
            label=precision,
        )
        axes[1].plot(
            [r["batch"] for r in rs],
            [r["ms_per_token"] for r in rs],
            "o-",
            label=precision,
        )
    for ax, label in zip(axes, ("tokens/s", "ms per token (step / batch)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel(label)
        ax.legend()
    axes[0].set_title(f"Decoding, {args.preset} {args.size}")
    name = "decoding_step_calls" if args.step_calls else "decoding"
    png = common.save_figure(fig, name, args.out_dir)
    common.report(
        name,
        "Batched decoding by weight precision",
        [
            "precision",
            "batch",
            "weights MiB",
            "step ms",
            "ms/token",
            "tokens/s",
            "time vs float32",
            "floor ms",
        ],
        rows,
        {"results": results, "plot": png, "size": args.size, "preset": args.preset},
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
