"""Pipeline throughput of data.long_document_dataset (tokens per second).

    python benchmarks/data_throughput.py --corpus books --data_dir DATA_DIR \
        [--segment_length 512 --batch_size 8 --tokenizer bytes|MODEL.model --steps 300]
        [--consumer_tokens_per_s N]

Without a prepared ``--data_dir`` it uses the real-text fixtures in tests/fixtures/data.
The trainer benchmark can call :func:`pipeline_tokens_per_s` and compare with its step rate;
It also times the XLA training step of ``--step_preset`` at ``--step_size`` (default
rec_fixed_skip / small_37m, 4096 tokens; ``--step_preset ''`` skips it) or takes
``--consumer_tokens_per_s``, and prints the ratio (the goal is >= 10x the training step).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "data")


def _fixture_texts():
    out = []
    for sub in ("books", "papers"):
        folder = os.path.join(FIXTURES, sub)
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                out.append(f.read())
    return out


def pipeline_tokens_per_s(
    corpus="books",
    split="train",
    *,
    data_dir=None,
    segment_length=512,
    batch_size=8,
    tokenizer="bytes",
    steps=300,
    warmup=20,
    documents=None,
) -> dict:
    """Runs the pipeline for ``steps`` batches after ``warmup``; returns the measured rates."""
    ds = data.long_document_dataset(
        corpus,
        split,
        segment_length=segment_length,
        batch_size=batch_size,
        tokenizer=tokenizer,
        data_dir=data_dir,
        documents=documents,
    )
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    nonzero = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
        nonzero += int(batch["nonzero_tokens"].numpy().sum())
    elapsed = time.perf_counter() - start
    return {
        "tokens_per_s": steps * batch_size * segment_length / elapsed,
        "nonpad_tokens_per_s": nonzero / elapsed,
        "steps_per_s": steps / elapsed,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="books")
    p.add_argument("--split", default="train")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--segment_length", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--tokenizer", default="bytes")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--consumer_tokens_per_s", type=float, default=None)
    p.add_argument(
        "--step_preset",
        default="rec_fixed_skip",
        help="measure this preset's XLA training step as the consumer ('' to skip)",
    )
    p.add_argument("--step_size", default="small_37m")
    p.add_argument("--step_tokens", type=int, default=4096)
    args = p.parse_args(argv)
    documents = None
    if args.data_dir is None:
        texts = _fixture_texts()
        documents = texts * (1 + args.batch_size // len(texts))  # enough for every slot
        print("no --data_dir: using tests/fixtures/data", file=sys.stderr)
    r = pipeline_tokens_per_s(
        args.corpus,
        args.split,
        data_dir=args.data_dir,
        segment_length=args.segment_length,
        batch_size=args.batch_size,
        tokenizer=args.tokenizer,
        steps=args.steps,
        documents=documents,
    )
    print(
        f"pipeline: {r['tokens_per_s']:,.0f} tokens/s ({r['nonpad_tokens_per_s']:,.0f} non-pad), "
        f"{r['steps_per_s']:,.1f} batches/s of [{args.batch_size}, {args.segment_length}] "
        f"({args.corpus}/{args.split}, tokenizer={args.tokenizer})"
    )
    if not args.consumer_tokens_per_s and args.step_preset:
        from benchmarks import step_time

        m = step_time.measure(
            args.step_preset, args.step_size, None, args.step_tokens, steps=2
        )
        args.consumer_tokens_per_s = m["tokens_per_step"] / m["step_s"]
        print(
            f"training step: {args.step_preset}/{args.step_size}, "
            f"{m['tokens_per_step']} tokens in {m['step_s']:.2f} s (XLA, median of 2)"
        )
    if args.consumer_tokens_per_s:
        ratio = r["tokens_per_s"] / args.consumer_tokens_per_s
        print(
            f"consumer: {args.consumer_tokens_per_s:,.0f} tokens/s; pipeline/consumer = {ratio:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
