"""What int8 and bfloat16 weights cost in quality, on a trained model.

Loads a trained preset (default: the shipped `brt_books_mini`) three ways,
through Keras' own API:

- float32: `BlockRecurrentCausalLM.from_preset(name)`;
- int8: the same, then `lm.quantize("int8")`;
- bfloat16: loaded under `keras.config.set_dtype_policy("bfloat16")`.

For each: test bits/byte over the corpus' test documents streamed with
carried state (`trainers.scoring`, as `trainers.evaluate` scores), the
difference to float32 in percent (target, issue 12: within 0.5 %), and the
agreement of greedy continuations with float32's (the fraction of generated
tokens equal position by position, and of continuations identical to the end).

    taskset -c 1 python -m benchmarks.quant_quality --data_dir artifacts/data/tfds \\
        [--corpus books --max-segments 200 --prompts 16 --new-tokens 64]

The corpus must be built (`make train` builds books under artifacts/data/tfds).
"""

import time

import numpy as np

from benchmarks import common
from benchmarks import decoding

PRECISIONS = ("float32", "int8", "bfloat16")


def load(preset, precision):
    from brt_keras import BlockRecurrentCausalLM

    return decoding.at_precision(
        lambda: BlockRecurrentCausalLM.from_preset(preset), precision
    )


def continuations(lm, prompts, new_tokens):
    lm.compile(sampler="greedy")
    outs = lm.generate(prompts, max_length=max(len(p) for p in prompts) + new_tokens)
    # Byte tokens: the continuation's bytes are its tokens.
    return [o.encode("utf-8")[len(p.encode("utf-8")) :] for o, p in zip(outs, prompts)]


def agreement(ours, reference):
    same = total = identical = 0
    for a, b in zip(ours, reference):
        n = max(len(a), len(b))
        same += sum(x == y for x, y in zip(a, b))
        total += n
        identical += a == b
    return same / max(total, 1), identical / max(len(reference), 1)


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="brt_books_mini")
    parser.add_argument("--corpus", default="books")
    parser.add_argument("--data_dir", default="artifacts/data/tfds")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-segments", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-bytes", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if args.quick:
        args.max_segments, args.prompts, args.new_tokens = 4, 2, 8
    import data
    from trainers import scoring

    try:
        documents = data.load_documents(args.corpus, "test", args.data_dir).texts
    except data.DatasetNotPreparedError as e:
        raise SystemExit(f"{e}\n(build it first, e.g. `make train` for books)") from e
    prompts = []
    for d in documents[: args.prompts]:
        raw = d if isinstance(d, bytes) else d.encode("utf-8")
        prompts.append(raw[: args.prompt_bytes].decode("utf-8", "ignore"))
    results, reference = [], None
    for precision in args.precisions.split(","):
        lm = load(args.preset, precision)
        t0 = time.time()
        scores = scoring.score_documents(
            lm, documents, batch_size=args.batch, max_segments=args.max_segments
        )
        bits_per_byte = scores.total_nll / np.log(2) / max(scores.total_bytes, 1)
        gen = continuations(lm, prompts, args.new_tokens)
        r = {
            "precision": precision,
            "bits_per_byte": float(bits_per_byte),
            "bytes_scored": int(scores.total_bytes),
            "seconds": round(time.time() - t0, 1),
        }
        if reference is None:
            reference = (r, gen)
        base, base_gen = reference
        r["vs_float32_percent"] = 100 * (bits_per_byte / base["bits_per_byte"] - 1)
        r["greedy_token_agreement"], r["greedy_identical"] = agreement(gen, base_gen)
        r["example"] = gen[0].decode("utf-8", "replace")
        common.log(
            f"[quant_quality] {precision}: {bits_per_byte:.4f} bits/byte "
            f"({r['vs_float32_percent']:+.2f} %), greedy agreement "
            f"{r['greedy_token_agreement']:.3f}"
        )
        results.append(r)
    rows = [
        [
            r["precision"],
            r["bits_per_byte"],
            r["vs_float32_percent"],
            r["greedy_token_agreement"],
            r["greedy_identical"],
        ]
        for r in results
    ]
    notes = [
        f"{args.preset} on {args.corpus}/test: {results[0]['bytes_scored']} bytes "
        f"(first {args.max_segments} batches of {args.batch} documents, carried state); "
        f"greedy: {len(prompts)} prompts of {args.prompt_bytes} bytes, "
        f"{args.new_tokens} new tokens",
        "target (issue 12): bits/byte within 0.5 % of float32",
    ]
    common.report(
        "quant_quality",
        "Quality of int8 / bfloat16 weights on a trained model",
        [
            "precision",
            "bits/byte",
            "vs float32 %",
            "greedy token agreement",
            "identical continuations",
        ],
        rows,
        {"results": results, "preset": args.preset, "corpus": args.corpus},
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
