"""Training step time of every preset, normalised to slide_13 (Table 1).

The issue's setting: `small_37m`, 4096 tokens per step (segment 4096 batch 1
for Slide/Rec/Feedback; XL:W runs batch 4096/W of W-token segments, as the
paper holds tokens per step fixed), XLA-compiled train step (forward,
backward, Adafactor) on a carried state.

`--setting issue` runs that; `--setting scaled` divides the window by 4
(W=128, 1024 tokens per step, same layer sizes, same N=8 blocks and XL
window ratios) so every preset fits a small CPU; `--setting both` (the
default) runs the key presets at the issue's setting and all at the scaled
one.

    python -m benchmarks.step_time [--quick] [--setting both|issue|scaled]
"""

import time

import keras
import numpy as np

from benchmarks import common
from benchmarks import flops as flops_lib
from brt_keras.layers.sliding_window_attention import resolve_query_chunk_size
from brt_keras.models import presets

KEY_PRESETS = ("slide_13", "rec_fixed_skip", "xl_2048", "xl_512")
SETTINGS = {
    # name: (size, base window, tokens per step)
    "issue": ("small_37m", 512, 4096),
    "scaled": ("small_37m", 128, 1024),
    "quick": ("tiny", 8, 64),
}


def measure(
    variant,
    size,
    window,
    tokens,
    steps,
    seed=0,
    dropout=None,
    remat=False,
    loss_chunk_tokens=None,
    query_chunk_size=None,
):
    """Compile time, per-step seconds and peak resident memory of one
    preset's train step (the peak is the process's: run it isolated)."""
    import resource

    import keras

    keras.utils.set_random_seed(seed)
    overrides = {} if dropout is None else {"dropout": dropout}
    if remat:
        # True (a bool from older callers) and "attention" are the same setting.
        overrides["remat"] = True if remat in (True, "attention") else remat
    if loss_chunk_tokens:
        overrides["loss_chunk_tokens"] = loss_chunk_tokens
    if query_chunk_size:
        overrides["query_chunk_size"] = query_chunk_size
    lm = common.build_lm(variant, size, window=window, **overrides)
    segment = lm.segment_length
    batch = max(1, tokens // segment)
    step = common.TrainStep(lm)
    rng = np.random.default_rng(seed)
    vocab = lm.backbone.vocabulary_size
    state = lm.get_initial_state(batch)
    sos = np.ones((batch,), bool)

    def data():
        ids = common.random_ids(rng, batch, segment + 1, vocab)
        return ids[:, :-1], ids[:, 1:]

    x, y = data()
    t0 = time.perf_counter()
    loss, state = common.block_until_ready(step(x, y, state, sos))
    compile_s = time.perf_counter() - t0
    sos = np.zeros((batch,), bool)
    times = []
    for _ in range(steps):
        x, y = data()
        t, (loss, state) = common.timed(step, x, y, state, sos)
        times.append(t)
    b = lm.backbone
    return {
        "variant": variant,
        "size": size,
        "window": b.block_size,
        "segment": segment,
        "batch": batch,
        "tokens_per_step": batch * segment,
        "layers": b.num_layers,
        "params": common.count_params(lm),
        "compile_and_first_step_s": compile_s,
        "step_times_s": times,
        "step_s": float(np.median(times)),
        "step_min_s": float(np.min(times)),
        "model_tflops_per_step": flops_lib.train_flops(b, batch * segment) / 1e12,
        "loss": float(np.asarray(loss)),
        "dropout": lm.backbone.dropout,
        "remat": remat or False,
        "loss_chunk_tokens": lm.backbone.loss_chunk_tokens,
        "query_chunk_size": resolve_query_chunk_size(b.query_chunk_size, b.block_size),
        # ru_maxrss is in KiB on Linux: the whole process, compile included.
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_accelerator_gib": peak_accelerator_gib(),
    }


def peak_accelerator_gib():
    """Peak memory the step held on a GPU/TPU (JAX backend), None on a CPU."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def measure_isolated(
    variant,
    size,
    window,
    tokens,
    steps,
    seed,
    dropout,
    remat=False,
    chunk=None,
    query_chunk_size=None,
):
    """`measure` in a fresh process: memory is returned between presets and
    a preset that is killed (out of memory) is recorded, not fatal."""
    spec = [variant, size, window, tokens, steps, seed, dropout, remat, chunk]
    spec.append(query_chunk_size)
    result, error = common.run_isolated("benchmarks.step_time", spec)
    if error:
        return {
            "variant": variant,
            "size": size,
            "error": error,
            "step_s": float("nan"),
            "step_min_s": float("nan"),
            "dropout": dropout,
        }
    return result


def run_setting(
    name,
    variants,
    steps,
    seed,
    dropout=None,
    remat=False,
    chunk=None,
    query_chunk_size=None,
):
    size, window, tokens = SETTINGS[name]
    rows = []
    for variant in variants:
        common.log(f"[step_time:{name}] {variant} ({size}, W={window}) ...")
        r = measure_isolated(
            variant,
            size,
            window,
            tokens,
            steps,
            seed,
            dropout,
            remat,
            chunk,
            query_chunk_size,
        )
        r["setting"] = name
        if "error" in r:
            common.log(f"  failed: {r['error']}")
            rows.append(r)
            continue
        common.log(
            f"  step {r['step_s']:.3f}s (times {np.round(r['step_times_s'], 3)}), "
            f"compile+first {r['compile_and_first_step_s']:.1f}s"
        )
        rows.append(r)
    base = next(
        (r for r in rows if r["variant"] == "slide_13" and "error" not in r), None
    )
    for r in rows:
        r["relative_to_slide_13"] = r["step_s"] / base["step_s"] if base else None
        r["relative_min_to_slide_13"] = (
            r["step_min_s"] / base["step_min_s"] if base else None
        )
    return rows


def targets(rows):
    by = {r["variant"]: r for r in rows}
    out = {}
    if "rec_fixed_skip" in by and "slide_13" in by:
        ratio = by["rec_fixed_skip"]["step_s"] / by["slide_13"]["step_s"]
        out["rec_fixed_skip / slide_13 <= 1.05"] = (ratio, ratio <= 1.05)
    if "xl_2048" in by and "rec_fixed_skip" in by:
        ratio = by["xl_2048"]["step_s"] / by["rec_fixed_skip"]["step_s"]
        out["xl_2048 / rec_fixed_skip >= 1.8"] = (ratio, ratio >= 1.8)
    return out


def plot(all_rows, out_dir):
    settings = sorted({r["setting"] for r in all_rows})
    fig, axes = common.new_figure(ncols=len(settings), width=7)
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, settings):
        rows = [r for r in all_rows if r["setting"] == name and "error" not in r]
        if not rows:
            continue
        labels = [r["variant"] for r in rows]
        ours = [r["relative_to_slide_13"] or 0 for r in rows]
        paper = [common.PAPER_STEP_TIME.get(v, np.nan) for v in labels]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, ours, 0.4, label="measured (this machine)")
        ax.bar(x + 0.2, paper, 0.4, label="paper Table 1 (TPU)")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
        r0 = rows[0]
        ax.set_title(
            f"{name}: {r0['size']}, {r0['tokens_per_step']} tokens/step",
            fontsize=9,
        )
        ax.set_ylabel("step time / slide_13")
        ax.legend(fontsize=8)
    return common.save_figure(fig, "step_time", out_dir)


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--setting", default="both", choices=["both", "issue", "scaled"]
    )
    parser.add_argument(
        "--presets",
        default=None,
        help="comma list (default: key presets for the issue setting, all for scaled)",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per preset")
    parser.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="override the presets' dropout (0.05); 0 removes the RNG cost",
    )
    parser.add_argument(
        "--remat",
        nargs="?",
        const="attention",
        default=None,
        choices=["attention", "layer"],
        help="rematerialise the attention cores (`--remat`, remat=True) or every "
        "sliding-window layer (`--remat layer`); with it xl_2048 also runs with "
        "dropout at the issue setting",
    )
    parser.add_argument(
        "--loss-chunk-tokens",
        type=int,
        default=None,
        help="the backbone's loss_chunk_tokens: the loss without the full "
        "[B, L, V] logits (default: full logits, the reference)",
    )
    parser.add_argument(
        "--query-chunk-size",
        type=int,
        default=None,
        help="the backbone's query_chunk_size (default: the model's, W / 4 for "
        "W >= 256; W = the reference's [W, 2W] attention tiles)",
    )
    common.add_isolated_args(parser)
    args = parser.parse_args(argv)
    if common.run_if_isolated(args, measure):
        return

    # (label, setting, presets, dropout); dropout None = the presets' 0.05.
    plan = []
    chosen = args.presets.split(",") if args.presets else None
    d = args.dropout
    if args.quick:
        plan.append(("quick", "quick", chosen or list(KEY_PRESETS), d))
        args.steps = min(args.steps, 2)
    else:
        if args.setting in ("both", "issue"):
            if d is None and args.remat:
                label = "issue d=0.05 remat" + (
                    "" if args.remat == "attention" else " layer"
                )
                plan.append((label, "issue", chosen or list(KEY_PRESETS), None))
            elif d is None:
                # With dropout, xl_2048 at 2 x 2048 tokens outgrows 24 GiB
                # (killed at 18 GB RSS): it runs without dropout only.
                no_xl = [v for v in KEY_PRESETS if v != "xl_2048"]
                plan.append(("issue d=0.05", "issue", chosen or no_xl, None))
                plan.append(("issue d=0", "issue", chosen or list(KEY_PRESETS), 0.0))
            else:
                plan.append((f"issue d={d:g}", "issue", chosen or list(KEY_PRESETS), d))
        if args.setting in ("both", "scaled"):
            label = "scaled" if d is None else f"scaled d={d:g}"
            plan.append((label, "scaled", chosen or list(presets.VARIANTS), d))

    all_rows, target_results = [], {}
    for label, name, variants, dropout in plan:
        rows = run_setting(
            name,
            variants,
            args.steps,
            args.seed,
            dropout,
            args.remat,
            args.loss_chunk_tokens,
            args.query_chunk_size,
        )
        if args.loss_chunk_tokens:
            label += f" loss chunk {args.loss_chunk_tokens}"
        if args.query_chunk_size:
            label += f" query chunk {args.query_chunk_size}"
        for r in rows:
            r["setting"] = label
        all_rows.extend(rows)
        target_results[label] = {
            k: {"value": v, "met": met} for k, (v, met) in targets(rows).items()
        }

    headers = [
        "setting",
        "preset",
        "W",
        "L x B",
        "layers",
        "dropout",
        "step s",
        "min s",
        "rel. slide_13",
        "paper",
        "model TFLOP/step",
        "compile s",
        "peak RSS GiB",
        "peak accel. GiB",
    ]

    def cell(r, key):
        return r.get(key, r.get("error") if key == "step_s" else None)

    table_rows = [
        [
            r["setting"],
            r["variant"],
            cell(r, "window"),
            f"{r.get('segment')}x{r.get('batch')}",
            cell(r, "layers"),
            r.get("dropout"),
            cell(r, "step_s"),
            cell(r, "step_min_s"),
            cell(r, "relative_to_slide_13"),
            common.PAPER_STEP_TIME.get(r["variant"]),
            cell(r, "model_tflops_per_step"),
            cell(r, "compile_and_first_step_s"),
            cell(r, "peak_rss_gib"),
            r.get("peak_accelerator_gib"),
        ]
        for r in all_rows
    ]
    notes = [
        f"{s}: {k} -> {t['value']:.3f} ({'met' if t['met'] else 'NOT met'})"
        for s, ts in target_results.items()
        for k, t in ts.items()
    ]
    notes.append(f"median of {args.steps} timed steps after one compile step")
    png = plot(all_rows, args.out_dir)
    common.report(
        "step_time",
        "Training step time relative to slide_13",
        headers,
        table_rows,
        {
            "settings": {label: SETTINGS[name] for label, name, _, _ in plan},
            "rows": all_rows,
            "targets": target_results,
            "plot": png,
        },
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
