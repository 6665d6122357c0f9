"""Milliseconds per generated token at context positions 1k, 8k and 32k.

The context is streamed through the compiled segment forward
(`call_with_state`, segment by segment), then tokens are decoded with the
compiled `decode_step` (one token, attends to the cached last W keys/values
per layer and reads the recurrent state) and `end_block` (state update once
per W tokens). Reported: median ms per `decode_step` (contexts decoded round-robin so that machine load
hits all alike), ms per `end_block`,
and the amortised cost per token (step + end_block / W). Target: flat in the
context position.

    python -m benchmarks.generation [--quick] [--contexts 1024,8192,32768]
"""

import time

import numpy as np

from benchmarks import common


def prefill(lm, ids, state=None):
    """Streams `ids [B, T]` (T a multiple of the segment or of W) through
    the compiled segment forward; returns (last logits, state, seconds)."""
    batch, length = ids.shape
    segment = lm.segment_length
    forward = common.forward_fn(lm)
    state = lm.get_initial_state(batch) if state is None else state
    logits = None
    t0 = time.perf_counter()
    for start in range(0, length, segment):
        chunk = ids[:, start : start + segment]
        logits, state = forward(chunk, state)
    common.block_until_ready(state)
    return logits, state, time.perf_counter() - t0


class Decoder:
    """Decoding position after a random `context`: prefilled state, cache and
    the last greedy token; `step()` decodes one token and returns seconds."""

    def __init__(self, lm, context, seed=0, batch=1):
        from keras import ops

        self.lm, self.context, self.ops = lm, context, ops
        rng = np.random.default_rng(seed + context)
        vocab = lm.backbone.vocabulary_size
        self.w = lm.backbone.block_size
        if context % self.w:
            raise ValueError(f"context {context} must be a multiple of W={self.w}")
        ids = common.random_ids(rng, batch, context, vocab)
        logits, state, self.prefill_s = prefill(lm, ids)
        self.cache = lm.decode_cache(state)
        self._step = lm._compiled("step", lm.decode_step)
        self._end_block = lm._compiled("end_block", lm.end_block)
        last = np.argmax(np.asarray(logits[:, -1]), -1)
        self.token = ops.convert_to_tensor(last, "int32")
        self.position = 0
        self.times = []
        # Compile (or reuse) the step and end_block functions.
        index = ops.convert_to_tensor(0, "int32")
        common.block_until_ready(self._step(self.token, self.cache, index))
        common.block_until_ready(self._end_block(self.cache))

    def step(self):
        ops = self.ops
        index = ops.convert_to_tensor(self.position % self.w, "int32")
        t0 = time.perf_counter()
        logits, self.cache = self._step(self.token, self.cache, index)
        self.token = ops.cast(ops.argmax(logits, axis=-1), "int32")
        common.block_until_ready(self.token)
        self.times.append(time.perf_counter() - t0)
        self.position += 1
        if self.position % self.w == 0:
            self.cache = self._end_block(self.cache)

    def end_block_seconds(self, repeats=3):
        return [common.timed(self._end_block, self.cache)[0] for _ in range(repeats)]

    def result(self):
        step_ms = 1e3 * float(np.median(self.times))
        end_ms = 1e3 * float(np.median(self.end_block_seconds()))
        return {
            "context": self.context,
            "new_tokens": len(self.times),
            "prefill_s": self.prefill_s,
            "step_ms": step_ms,
            "step_ms_min": 1e3 * float(np.min(self.times)),
            "step_ms_all": [1e3 * t for t in self.times],
            "end_block_ms": end_ms,
            "amortised_ms_per_token": step_ms + end_ms / self.w,
            "window": self.w,
        }


def decode_timing(lm, context, new_tokens, seed=0, batch=1):
    """Times `new_tokens` greedy decoding steps after `context` tokens."""
    return interleaved_timing(lm, [context], new_tokens, seed, batch)[0]


def interleaved_timing(lm, contexts, new_tokens, seed=0, batch=1):
    """Prefills every context, then decodes round-robin (one token per
    context in turn), so machine load affects every context alike."""
    decoders = []
    for context in contexts:
        common.log(f"[generation] prefill {context} tokens ...")
        decoders.append(Decoder(lm, context, seed, batch))
    for _ in range(new_tokens):
        for d in decoders:
            d.step()
    return [d.result() for d in decoders]


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", default="small_37m")
    parser.add_argument("--presets", default="rec_fixed_skip,slide_13")
    parser.add_argument("--contexts", default="1024,8192,32768")
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.contexts, args.new_tokens = "tiny", "32,128,512", 8
        args.presets = "rec_fixed_skip"
    import keras

    contexts = [int(c) for c in args.contexts.split(",")]
    rows, results = [], []
    for variant in args.presets.split(","):
        keras.utils.set_random_seed(args.seed)
        lm = common.build_lm(variant, args.size)
        common.log(f"[generation] {variant} {args.size} contexts {contexts}")
        for r in interleaved_timing(lm, contexts, args.new_tokens, args.seed):
            r["variant"] = variant
            r["size"] = args.size
            results.append(r)
            common.log(
                f"  {r['context']}: step {r['step_ms']:.2f} ms, "
                f"end_block {r['end_block_ms']:.1f} ms"
            )
        first = [r for r in results if r["variant"] == variant][0]
        for r in results:
            if r["variant"] == variant:
                r["relative_to_first_context"] = (
                    r["amortised_ms_per_token"] / first["amortised_ms_per_token"]
                )
                rows.append(
                    [
                        variant,
                        args.size,
                        r["context"],
                        r["step_ms"],
                        r["end_block_ms"],
                        r["amortised_ms_per_token"],
                        r["relative_to_first_context"],
                        r["prefill_s"],
                    ]
                )
    fig, ax = common.new_figure()
    for variant in args.presets.split(","):
        rs = [r for r in results if r["variant"] == variant]
        ax.plot(
            [r["context"] for r in rs],
            [r["amortised_ms_per_token"] for r in rs],
            "o-",
            label=variant,
        )
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("context position (tokens)")
    ax.set_ylabel("ms per generated token (amortised)")
    ax.set_title(f"Incremental decoding, {args.size}, batch 1")
    ax.legend()
    png = common.save_figure(fig, "generation", args.out_dir)
    worst = max(r["relative_to_first_context"] for r in results)
    notes = [
        f"max ms/token relative to the shortest context: {worst:.3f} "
        f"(target flat; {'met' if worst <= 1.1 else 'NOT met'} at 1.1x)",
        f"median over {args.new_tokens} decode steps per context, decoded "
        "round-robin across contexts; end_block median of 3",
    ]
    common.report(
        "generation",
        "Generation cost per token vs context position",
        [
            "preset",
            "size",
            "context",
            "decode_step ms",
            "end_block ms",
            "amortised ms/token",
            "rel. first",
            "prefill s",
        ],
        rows,
        {"results": results, "plot": png, "target_flat_max_ratio": worst},
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
