"""Issue 10's code comparison at `small_37m` under JAX on a GPU, without TensorFlow.

`benchmarks/memory_value.py` trains through `trainers.train`, whose input
pipeline is tf.data. The device machine has JAX but no TensorFlow (too large
to carry there), so this script runs the same comparison with a numpy
long-document batcher in place of `data.long_document_dataset` (the same
layout: each batch slot reads whole documents segment by segment, the
first segment flagged `start_of_sequence`, zero padding at a document's
end) and the same model, optimizer, loss and scoring as the trainers
(`BlockRecurrentStreamModel`, `PaperAdafactor` with the rsqrt schedule,
`trainers.scoring`).

    # here (TensorFlow present): the code corpus as bytes, ~37 MB
    python -m benchmarks.memory_value_gpu --export .gpu_data/code.npz \
        --data-dir /work/mv_art/tfds
    # there (see benchmarks/device_gpu.sh issue10): train and evaluate
    KERAS_BACKEND=jax python -m benchmarks.memory_value_gpu \
        --corpus-npz .gpu_data/code.npz --out-dir $OUT

For each preset: train `--train-tokens` (or until `--minutes-per-model`),
then evaluate the test split twice, state carried and reset at every segment
(the memory ablation), with bits/token by position and 95 % bootstrap
intervals over documents; the report is `memory_value_gpu.json`.
"""

import math
import os
import time

import numpy as np

BYTE_OFFSET = 4  # data.tokenizers.ByteTokenizer: id = byte + 4, 0 = padding


def export(path, data_dir, corpus="code"):
    """Writes the corpus' train and test splits as bytes (needs TensorFlow)."""
    from data.pipeline import load_documents

    arrays = {}
    for split in ("train", "test"):
        texts = load_documents(corpus, split, data_dir).texts
        docs = [t if isinstance(t, bytes) else str(t).encode("utf-8") for t in texts]
        lengths = np.array([len(d) for d in docs], np.int64)
        arrays[f"{split}_bytes"] = np.frombuffer(b"".join(docs), np.uint8)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **arrays)
    return path


def load_split(npz, split):
    """List of int32 token-id arrays (byte + 4), one per document."""
    data, offsets = npz[f"{split}_bytes"], npz[f"{split}_offsets"]
    return [
        data[a:b].astype(np.int32) + BYTE_OFFSET
        for a, b in zip(offsets[:-1], offsets[1:])
        if b > a
    ]


def long_document_batches(docs, segment_length, batch_size, order=None, repeat=True):
    """Yields `(batch, doc_index [B], position [B])` like the trainers' pipeline.

    Slot `b` reads the documents at positions `b, b + B, b + 2B, ...` of
    `order(epoch)` (a permutation of the document indices), each from its
    first segment to its last. Without `repeat` a slot that has run out
    reads padding (document -1) until every slot has.
    """
    L, B, n = segment_length, batch_size, len(docs)
    if n < B:
        raise ValueError(f"{n} documents for {B} slots: every slot needs a document")
    order = order or (lambda epoch: np.arange(n))

    def slot(b):
        epoch = 0
        while True:
            perm = order(epoch)
            for i in perm[b::B]:
                ids = docs[i]
                for start in range(0, len(ids), L):
                    seg = np.zeros(L, np.int32)
                    part = ids[start : start + L]
                    seg[: len(part)] = part
                    yield seg, start == 0, int(i), start
            if not repeat:
                return
            epoch += 1

    slots = [slot(b) for b in range(B)]
    pad = (np.zeros(L, np.int32), False, -1, 0)
    while True:
        rows = [next(s, None) for s in slots]
        if all(r is None for r in rows):
            return
        rows = [pad if r is None else r for r in rows]
        batch = {
            "token_ids": np.stack([r[0] for r in rows]),
            "start_of_sequence": np.array([r[1] for r in rows], np.int32),
        }
        yield batch, np.array([r[2] for r in rows]), np.array([r[3] for r in rows])


def build(preset, size, seed):
    import keras

    from brt_keras.models import BlockRecurrentBackbone
    from brt_keras.models import BlockRecurrentCausalLM
    from brt_keras.models import presets

    config = presets.preset_config(preset, size)
    segment = config.pop("segment_length")
    keras.utils.set_random_seed(seed)
    return BlockRecurrentCausalLM(
        BlockRecurrentBackbone(**config), segment_length=segment
    )


def train(lm, docs, tokens_per_step, train_tokens, max_seconds, warmup, seed, log):
    """Trains `lm` in place the trainers' way; returns (steps, tokens, seconds)."""
    import keras

    from brt_keras.models.block_recurrent_stream_model import BlockRecurrentStreamModel
    from brt_keras.models.block_recurrent_stream_model import loss_weights
    from brt_keras.models.block_recurrent_stream_model import shift_targets
    from brt_keras.models.optimizers import PaperAdafactor
    from brt_keras.models.optimizers import RsqrtWarmup

    L = lm.segment_length
    B = max(1, tokens_per_step // L)
    model = BlockRecurrentStreamModel(lm, B)
    model.compile(
        optimizer=PaperAdafactor(
            learning_rate=RsqrtWarmup(base=1.0, warmup_steps=warmup)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    rng = np.random.default_rng(seed)
    perms = {}

    def order(epoch):
        if epoch not in perms:
            perms[epoch] = rng.permutation(len(docs))
        return perms[epoch]

    steps_total = math.ceil(train_tokens / (B * L))
    t0, step = time.perf_counter(), 0
    for batch, _, _ in long_document_batches(docs, L, B, order):
        targets = shift_targets(batch["token_ids"])
        weights = loss_weights(batch["token_ids"], targets)
        loss = model.train_on_batch(batch, targets, sample_weight=weights)
        step += 1
        elapsed = time.perf_counter() - t0
        if step % 200 == 0 or step == steps_total:
            log(f"  step {step}/{steps_total} loss {float(loss):.4f} {elapsed:.0f} s")
        if step >= steps_total or elapsed > max_seconds:
            break
    return step, step * B * L, time.perf_counter() - t0


def evaluate(lm, docs, batch_size, reset_state, max_tokens):
    """Bits/token of the test documents (split order), the trainers' scoring."""
    import keras

    from brt_keras.models.block_recurrent_stream_model import BlockRecurrentStreamModel
    from trainers import scoring

    L = lm.segment_length
    model = BlockRecurrentStreamModel(lm, batch_size)
    step, sync = scoring.make_step(model)
    scores = scoring.Scores(len(docs))
    for batch, doc, position in long_document_batches(
        docs, L, batch_size, repeat=False
    ):
        if scores.total_tokens >= max_tokens:
            scores.complete = False
            break
        start = batch["start_of_sequence"]
        x = dict(batch)
        if reset_state == "every_segment":
            x["start_of_sequence"] = np.ones_like(start)
        nll, weights = step(x)
        num_bytes = (batch["token_ids"] >= BYTE_OFFSET).sum(axis=1)
        scores.add(
            doc,
            position,
            keras.ops.convert_to_numpy(nll),
            keras.ops.convert_to_numpy(weights),
            num_bytes,
        )
    sync()
    per_doc = scores.per_document()
    return {
        "reset_state": reset_state,
        "bits_per_token": scores.bits_per_token,
        "tokens": scores.total_tokens,
        "complete": scores.complete,
        "interval": scoring.bootstrap_interval(per_doc["nll_bits"], per_doc["tokens"]),
        "by_position": scores.by_position(),
        "per_document": per_doc,
    }


def main(argv=None):
    from benchmarks import common

    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--export", default=None, help="write the corpus npz and stop")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (--export)")
    parser.add_argument("--corpus-npz", default=".gpu_data/code.npz")
    parser.add_argument("--size", default="small_37m")
    parser.add_argument("--presets", default="rec_fixed_skip,slide_12,xl_512")
    parser.add_argument("--train-tokens", type=int, default=10_000_000)
    parser.add_argument("--tokens-per-step", type=int, default=8192)
    parser.add_argument("--minutes-per-model", type=float, default=1.5)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--eval-tokens", type=int, default=1_000_000)
    parser.add_argument("--eval-batch", type=int, default=8)
    args = parser.parse_args(argv)
    if args.export:
        print(export(args.export, args.data_dir))
        return
    if args.quick:
        args.size, args.train_tokens, args.tokens_per_step = "tiny", 4096, 256
        args.eval_tokens, args.eval_batch, args.warmup_steps = 2048, 2, 2
    from trainers import scoring

    npz = np.load(args.corpus_npz)
    train_docs, test_docs = load_split(npz, "train"), load_split(npz, "test")
    results = []
    for preset in args.presets.split(","):
        common.log(f"[memory_value_gpu] {preset} {args.size}: train")
        lm = build(preset, args.size, args.seed)
        steps, tokens, seconds = train(
            lm,
            train_docs,
            args.tokens_per_step,
            args.train_tokens,
            args.minutes_per_model * 60,
            args.warmup_steps,
            args.seed,
            common.log,
        )
        entry = {"preset": preset, "steps": steps, "train_tokens": tokens}
        entry["train_seconds"] = seconds
        for reset in ("never", "every_segment"):
            common.log(f"[memory_value_gpu] {preset}: evaluate {reset}")
            entry[reset] = evaluate(
                lm, test_docs, args.eval_batch, reset, args.eval_tokens
            )
        entry["difference"] = scoring.paired_difference(
            entry["never"], entry["every_segment"]
        )
        results.append(entry)

    def fmt(r):
        lo, hi = r["interval"] or (math.nan, math.nan)
        return f"{r['bits_per_token']:.4f} [{lo:.4f}, {hi:.4f}]"

    rows = [
        [
            e["preset"],
            e["train_tokens"],
            f"{e['train_seconds']:.0f}",
            fmt(e["never"]),
            fmt(e["every_segment"]),
            f"{e['difference']['difference']:+.4f} "
            f"[{e['difference']['interval'][0]:+.4f}, "
            f"{e['difference']['interval'][1]:+.4f}]",
        ]
        for e in results
    ]
    import keras

    common.report(
        "memory_value_gpu",
        f"Code, {args.size}, {keras.backend.backend()}: bits/token carried vs "
        "reset every segment",
        ["preset", "train tokens", "train s", "carried", "reset", "reset - carried"],
        rows,
        {"size": args.size, "results": results},
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
