"""Where a training step's resident memory goes (issue 12: `rec_fixed_skip` <= 4 GiB).

The step_time table gives one peak per preset; this splits it. Each run is a
fresh process (`common.run_isolated`) that records its peak resident memory
after importing Keras, after building the model, after the first step (XLA
compile and step) and after a second step. Three runs tell the parts apart:

- the preset as given;
- the same with a byte vocabulary (260): the difference is the output layer,
  logits, log-softmax and their gradients;
- the byte vocabulary with fewer layers: the slope per layer is one layer's
  saved activations; what is left is the step's fixed cost (XLA's compile,
  the embedding, the optimizer's update, buffers the compiler keeps).

    python -m benchmarks.step_memory                  # small_37m, 4096 tokens, remat=True
    python -m benchmarks.step_memory --remat layer    # every sliding layer recomputed
    python -m benchmarks.step_memory --remat layer --loss-chunk-tokens 512  # no logits
    python -m benchmarks.step_memory --remat none --dropout 0.05
    python -m benchmarks.step_memory --quick          # tiny, seconds

Two peaks are reported per run. `step 2` is the process's peak so far
(`ru_maxrss`), which includes XLA compiling the whole step once on the
host. `step 2 alone` is the peak of the second step by itself: the kernel's
high-water mark (`VmHWM`) is reset after the first step (`clear_refs`,
Linux >= 4.0) after the heap's free memory is handed back
(`malloc_trim`), so it counts what the model, optimizer and runtime keep
plus what the running step needs, not the compile's transient peak nor the
memory glibc kept from it. On an accelerator the compile happens in host
memory, so `step 2 alone` is the closer analogue of the step's device
memory; `MALLOC_MMAP_THRESHOLD_=131072` in the environment lowers the
first (compile) peak too.
"""

import resource

import numpy as np

from benchmarks import common

BYTE_VOCABULARY = 260


def _peak_gib():
    # ru_maxrss is in KiB on Linux: the process's peak so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _reset_high_water_mark():
    """Resets the kernel's per-process peak RSS (`VmHWM`); False where the
    kernel does not allow it (not Linux, or Linux < 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap():
    """Returns freed heap memory to the kernel (glibc's `malloc_trim`), so
    memory the compile freed but the allocator kept is not counted as the
    step's. A no-op where the C library has no `malloc_trim`."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _high_water_mark_gib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return None


def measure(preset, size, tokens, dropout, remat, overrides, seed=0):
    """Peak RSS (GiB) at each stage of one process: import, build, step 1, step 2."""
    peaks = {"import": _peak_gib()}
    import keras

    keras.utils.set_random_seed(seed)
    lm = common.build_lm(
        preset, size, dropout=dropout, remat=remat, **(overrides or {})
    )
    peaks["build"] = _peak_gib()
    segment = lm.segment_length
    batch = max(1, tokens // segment)
    step = common.TrainStep(lm)
    vocab = lm.backbone.vocabulary_size
    rng = np.random.default_rng(seed)
    state = lm.get_initial_state(batch)
    for i, stage in enumerate(("step 1 (compile)", "step 2")):
        ids = common.random_ids(rng, batch, segment + 1, vocab)
        sos = np.full((batch,), i == 0)
        before = _peak_gib()
        # The reset also lowers ru_maxrss (Linux derives it from VmHWM), so
        # the process's peak is the larger of the peaks before and after.
        if i == 1:
            _trim_heap()
        reset = i == 1 and _reset_high_water_mark()
        _, state = common.block_until_ready(step(ids[:, :-1], ids[:, 1:], state, sos))
        alone = _high_water_mark_gib() if reset else None
        peaks[stage] = max(before, _peak_gib(), alone or 0.0)
        if reset:
            peaks["step 2 alone"] = alone
    return {
        "preset": preset,
        "size": size,
        "tokens_per_step": batch * segment,
        "layers": lm.backbone.num_layers,
        "vocabulary_size": vocab,
        "dropout": lm.backbone.dropout,
        "remat": remat,
        "loss_chunk_tokens": lm.backbone.loss_chunk_tokens,
        "peak_gib": peaks,
    }


def breakdown(full, byte, few, step="step 2"):
    """The parts of `full`'s peak at `step` (`"step 2"`: the process's peak,
    compile included; `"step 2 alone"`: the second step's), from the three
    runs (GiB)."""
    layers, few_layers = full["layers"], few["layers"]
    per_layer = (
        (byte["peak_gib"][step] - byte["peak_gib"]["build"])
        - (few["peak_gib"][step] - few["peak_gib"]["build"])
    ) / max(layers - few_layers, 1)
    output = full["peak_gib"][step] - byte["peak_gib"][step]
    model = full["peak_gib"]["build"]
    fixed = full["peak_gib"][step] - model - output - layers * per_layer
    return {
        "peak": full["peak_gib"][step],
        "after import and build": model,
        "output layer, logits and their gradients": output,
        "per layer": per_layer,
        f"all {layers} layers": layers * per_layer,
        "fixed cost of the step": fixed,
    }


def parser():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--preset", default="rec_fixed_skip")
    p.add_argument("--size", default="small_37m")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument(
        "--remat",
        default="attention",
        choices=["none", "attention", "layer"],
        help="the model's remat setting (none: False, attention: True)",
    )
    p.add_argument(
        "--loss-chunk-tokens",
        type=int,
        default=None,
        help="the backbone's loss_chunk_tokens (default None: full logits)",
    )
    p.add_argument("--few-layers", type=int, default=4)
    common.add_isolated_args(p)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if common.run_if_isolated(args, measure):
        return
    if args.quick:
        args.size, args.tokens, args.few_layers = "tiny", 64, 1
    remat = {"none": False, "attention": True, "layer": "layer"}[args.remat]
    runs = {}
    plan = (
        ("as given", {}),
        ("byte vocabulary", {"vocabulary_size": BYTE_VOCABULARY}),
        (
            f"byte vocabulary, {args.few_layers} layers",
            {"vocabulary_size": BYTE_VOCABULARY, "num_layers": args.few_layers},
        ),
    )
    for label, overrides in plan:
        if args.loss_chunk_tokens:
            overrides = dict(overrides, loss_chunk_tokens=args.loss_chunk_tokens)
        common.log(f"[step_memory] {args.preset} {args.size}: {label}")
        spec = [args.preset, args.size, args.tokens, args.dropout, remat, overrides]
        result, error = common.run_isolated("benchmarks.step_memory", spec)
        if error:
            raise SystemExit(f"{label}: {error}")
        runs[label] = result
    full, byte, few = (runs[label] for label, _ in plan)
    stages = ["import", "build", "step 1 (compile)", "step 2", "step 2 alone"]
    stages = [s for s in stages if all(s in r["peak_gib"] for r in runs.values())]
    parts = {s: breakdown(full, byte, few, s) for s in stages if s.startswith("step 2")}
    rows = [
        [label, r["layers"], r["vocabulary_size"]]
        + [round(r["peak_gib"][s], 3) for s in stages]
        for label, r in runs.items()
    ]
    notes = [
        f"{args.preset} {args.size}, {full['tokens_per_step']} tokens/step, dropout "
        f"{args.dropout}, remat {remat}, loss_chunk_tokens "
        f"{args.loss_chunk_tokens}, peak at {s}: "
        + "; ".join(f"{k} {v:.2f} GiB" for k, v in p.items())
        for s, p in parts.items()
    ]
    common.report(
        "step_memory",
        "Where a training step's resident memory goes (peak RSS, GiB)",
        ["run", "layers", "vocabulary"] + stages,
        rows,
        {
            "config": vars(args),
            "runs": runs,
            "breakdown": parts["step 2"],
            "breakdown_by_peak": parts,
        },
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
