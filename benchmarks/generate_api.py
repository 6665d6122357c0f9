"""Milliseconds per token through the public `lm.generate` (keras-hub's
contract: compiled decode loop over `call_with_cache`) after 1k and 8k
prompt tokens.

Each context is generated with `--short` and `--long` new tokens (same
compiled function: one length bucket), the prompt's blocks prefilled once and
reused; the difference over the extra tokens is the cost per token. Target: flat in the
prompt length (the decode cache does not grow).

    python -m benchmarks.generate_api [--quick] [--contexts 1024,8192]
"""

import time

import numpy as np

from benchmarks import common


def reuse_prefill(lm):
    """Prefill each prompt once: the timed calls then cost the compiled
    decode loop only (the prefill of 8k tokens would swamp 48 tokens)."""
    prefill, done = lm._prefill_cache, {}

    def once(token_ids, shortest):
        key = (token_ids.shape, int(shortest), token_ids[:, :shortest].tobytes())
        if key not in done:
            done[key] = prefill(token_ids, shortest)
        return done[key]

    lm._prefill_cache = once


def ms_per_token(lm, context, short, long, repeats, seed=0, batch=1):
    """(ms per decode step, seconds of the short call) of `lm.generate` on
    `batch` random prompts of `context` tokens."""
    rng = np.random.default_rng(seed + context)
    prompt = common.random_ids(rng, batch, context, lm.backbone.vocabulary_size)
    times = {}
    for n in (short, long):
        lm.generate(prompt, n)  # compile (once per length bucket)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.asarray(lm.generate(prompt, n))
            runs.append(time.perf_counter() - t0)
        times[n] = float(np.median(runs))
    return 1000 * (times[long] - times[short]) / (long - short), times[short]


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", default="small_37m")
    parser.add_argument("--preset", default="rec_fixed_skip")
    parser.add_argument("--contexts", default="1024,8192")
    parser.add_argument("--short", type=int, default=4)
    parser.add_argument("--long", type=int, default=52)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.contexts, args.repeats = "tiny", "128,1024", 2
    import keras

    keras.utils.set_random_seed(args.seed)
    lm = common.build_lm(args.preset, args.size)
    reuse_prefill(lm)
    rows, results = [], []
    for context in [int(c) for c in args.contexts.split(",")]:
        common.log(f"[generate_api] {args.preset} {args.size} prompt {context} ...")
        ms, short_s = ms_per_token(
            lm, context, args.short, args.long, args.repeats, args.seed
        )
        results.append({"context": context, "ms_per_token": ms, "call_s": short_s})
        rows.append([args.preset, args.size, context, ms, short_s])
    worst = max(r["ms_per_token"] for r in results) / results[0]["ms_per_token"]
    common.report(
        "generate_api",
        "lm.generate: ms per token vs prompt length (batch 1)",
        ["preset", "size", "prompt tokens", "ms/token", f"decode s ({args.short} new)"],
        rows,
        {"results": results, "max_ratio": worst, "settings": vars(args)},
        args.out_dir,
        [
            f"ms/token = (t({args.long} new) - t({args.short} new)) / "
            f"{args.long - args.short}, medians of {args.repeats}; max ratio to "
            f"the shortest prompt {worst:.3f} (target flat)"
        ],
    )


if __name__ == "__main__":
    main()
