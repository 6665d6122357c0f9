"""Time and peak memory per token, streaming 4k to 64k tokens.

`rec_fixed_skip` streams the sequence segment by segment through the
compiled forward (`call_with_state`), carrying its state; the comparison is a
full-causal-attention model of the same size (the XL layer with a window
equal to the whole sequence, one segment: attention cost O(T^2)). Full
attention is run only at `--full-lengths` (its [H, T, 2T] score tensor
outgrows this machine's memory beyond that). Target: rec per-token cost at
the longest length within 1.1x of the shortest, memory flat.

Every (model, length) runs in a fresh process; memory is that process'
peak resident set (sampled every 5 ms) above its level after building the
model, compilation and a warm-up segment included.

    python -m benchmarks.scaling [--quick] [--lengths 4096,...,65536]
"""

import time

import numpy as np

from benchmarks import common


def stream(lm, length, seed):
    """Streams `length` random tokens; returns seconds, peak extra RSS
    (bytes above the level after building the model, compilation and
    warm-up included), absolute peak RSS and carried-state bytes."""
    rng = np.random.default_rng(seed)
    vocab = lm.backbone.vocabulary_size
    segment = lm.segment_length
    forward = common.forward_fn(lm)
    state = lm.get_initial_state(1)
    ids = common.random_ids(rng, 1, length, vocab)
    with common.PeakRSS() as mem:
        # Compile (and warm) on one segment, outside the timing.
        common.block_until_ready(forward(ids[:, :segment], state))
        t0 = time.perf_counter()
        for start in range(0, length, segment):
            logits, state = forward(ids[:, start : start + segment], state)
            # Keep only what a streaming user keeps: the state.
            del logits
        common.block_until_ready(state)
        seconds = time.perf_counter() - t0
    state_bytes = sum(int(np.prod(x.shape)) * 4 for x in _leaves(state))
    return seconds, mem.peak - mem.start, mem.peak, state_bytes


def run_one(model, size, length, seed):
    """One measurement (in its own process: see `isolated`)."""
    import keras

    keras.utils.set_random_seed(seed)
    if model == "rec_fixed_skip":
        lm = common.build_lm("rec_fixed_skip", size)
    else:
        lm = common.build_lm("xl_512", size, block_size=length)
    s, mem, peak, state_bytes = stream(lm, length, seed)
    return dict(
        model=model,
        size=size,
        tokens=length,
        seconds=s,
        us_per_token=1e6 * s / length,
        peak_extra_mib=mem / 2**20,
        peak_rss_mib=peak / 2**20,
        carried_state_mib=state_bytes / 2**20 if model == "rec_fixed_skip" else None,
        segment=lm.segment_length,
    )


def isolated(model, size, length, seed):
    """`run_one` in a fresh process, so every memory peak starts from the
    same baseline; a run killed for memory is recorded, not fatal."""
    spec = [model, size, length, seed]
    result, error = common.run_isolated("benchmarks.scaling", spec)
    if error:
        return dict(model=model, size=size, tokens=length, error=error)
    return result


def _leaves(state):
    import keras

    return keras.tree.flatten(state)


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", default="small_37m")
    parser.add_argument("--lengths", default="4096,8192,16384,32768,65536")
    parser.add_argument(
        "--full-lengths",
        default="1024,2048,4096",
        help="lengths for the full-attention model (O(T^2) memory)",
    )
    common.add_isolated_args(parser)
    args = parser.parse_args(argv)
    if common.run_if_isolated(args, run_one):
        return
    if args.quick:
        args.size, args.lengths, args.full_lengths = "tiny", "64,128,256,512", "64,128"

    lengths = [int(v) for v in args.lengths.split(",")]
    full_lengths = [int(v) for v in args.full_lengths.split(",") if v]
    runs = [("rec_fixed_skip", n) for n in lengths]
    runs += [("full_attention", n) for n in full_lengths]
    results = []
    for model, length in runs:
        common.log(f"[scaling] {model} {args.size} {length} tokens ...")
        r = isolated(model, args.size, length, args.seed)
        if "error" in r:
            common.log(f"  failed: {r['error']}")
            continue
        common.log(
            f"  {r['us_per_token']:.1f} us/token, +{r['peak_extra_mib']:.0f} MiB"
        )
        results.append(r)

    for model in ("rec_fixed_skip", "full_attention"):
        rs = [r for r in results if r["model"] == model]
        for r in rs:
            r["relative_per_token"] = r["us_per_token"] / rs[0]["us_per_token"]
    rec_rows = [r for r in results if r["model"] == "rec_fixed_skip"]
    ratio = rec_rows[-1]["relative_per_token"]
    mem_growth = rec_rows[-1]["peak_extra_mib"] - rec_rows[0]["peak_extra_mib"]
    notes = [
        f"rec_fixed_skip per-token cost at {rec_rows[-1]['tokens']} vs "
        f"{rec_rows[0]['tokens']}: {ratio:.3f}x (target <= 1.1: "
        f"{'met' if ratio <= 1.1 else 'NOT met'})",
        f"rec_fixed_skip peak extra memory change {mem_growth:+.0f} MiB from the "
        "shortest to the longest run (flat means independent of length)",
        f"full attention run at {args.full_lengths} tokens only (its O(T^2) "
        "score tensors outgrow this machine's memory beyond that)",
    ]

    fig, axes = common.new_figure(ncols=2, width=5.5)
    for model, style in (("rec_fixed_skip", "o-"), ("full_attention", "s--")):
        rs = [r for r in results if r["model"] == model]
        if not rs:
            continue
        t = [r["tokens"] for r in rs]
        axes[0].plot(t, [r["us_per_token"] for r in rs], style, label=model)
        axes[1].plot(t, [r["peak_extra_mib"] for r in rs], style, label=model)
    for ax, label in zip(axes, ("us per token", "peak extra RSS (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("tokens streamed")
        ax.set_ylabel(label)
        ax.legend()
    axes[0].set_title(f"Forward cost per token, {args.size}")
    axes[1].set_title("Peak memory above baseline")
    png = common.save_figure(fig, "scaling", args.out_dir)
    common.report(
        "scaling",
        "Streaming cost and memory vs sequence length",
        [
            "model",
            "tokens",
            "seconds",
            "us/token",
            "rel. per token",
            "peak extra MiB",
            "carried state MiB",
        ],
        [
            [
                r["model"],
                r["tokens"],
                r["seconds"],
                r["us_per_token"],
                r["relative_per_token"],
                r["peak_extra_mib"],
                r["carried_state_mib"],
            ]
            for r in results
        ],
        {"size": args.size, "results": results, "plot": png},
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
