"""Evaluate a trained model the paper's way: whole test documents streamed
through the model with carried state.

    python -m trainers.evaluate --model_dir runs/mini [--split test --batch_size 4]

Each slot reads one document from its first segment to its last, carrying the
state; a slot that has run out of documents reads padding (not counted).
Prints and writes ``<model_dir>/eval_<split>.json`` with nats/bits per token,
bits per byte (UTF-8 bytes of the text the scored tokens cover) and
word-level perplexity (exp of the total NLL over the whitespace-separated
words of the documents).
"""

from trainers import backend as _backend

_backend.select()

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from keras import ops  # noqa: E402

from trainers import common  # noqa: E402

FLAGS = flags.FLAGS
common.define_common_flags()
flags.DEFINE_string("corpus", None, "Corpus (default: the training corpus).")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_integer("batch_size", 4, "Documents streamed in parallel.")
flags.DEFINE_integer(
    "max_segments", 0, "Stop after this many batches (0: all documents)."
)
flags.DEFINE_string(
    "output", None, "JSON path (default <model_dir>/eval_<split>.json)."
)


def segment_nll(model, x):
    """Per-slot summed NLL (nats) and scored-token counts of one segment,
    carrying the eval cache."""
    ids = x["token_ids"]
    logits = model(x, training=False)
    targets = ops.pad(ids[:, 1:], ((0, 0), (0, 1)))
    weights = ops.cast(ops.logical_and(ids > 0, targets > 0), "float32")
    logp = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(logp, ops.expand_dims(targets, -1), axis=-1)[..., 0]
    return -ops.sum(picked * weights, axis=1), ops.sum(weights, axis=1)


def make_step(model):
    """A compiled eval step that carries the model's eval cache."""
    if keras.backend.backend() == "jax":
        import jax

        def pure(trainable, non_trainable, x):
            def fn(x):
                return segment_nll(model, x)

            with keras.StatelessScope(
                state_mapping=list(zip(model.trainable_variables, trainable))
                + list(zip(model.non_trainable_variables, non_trainable))
            ) as scope:
                out = fn(x)
            new_nt = [scope.get_current_value(v) for v in model.non_trainable_variables]
            new_nt = [o if n is None else n for n, o in zip(new_nt, non_trainable)]
            return out, new_nt

        jitted = jax.jit(pure)
        holder = {"nt": [v.value for v in model.non_trainable_variables]}
        trainable = [v.value for v in model.trainable_variables]

        def step(x):
            out, holder["nt"] = jitted(trainable, holder["nt"], x)
            return out

        def sync():
            for v, value in zip(model.non_trainable_variables, holder["nt"]):
                v.assign(value)

        return step, sync
    import tensorflow as tf

    fn = tf.function(lambda x: segment_nll(model, x))
    return fn, lambda: None


def evaluate():
    if not FLAGS.model_dir:
        raise common.UsageError("--model_dir is required.")
    config = common.read_config(FLAGS.model_dir)
    lm = common.load_lm(FLAGS.model_dir)
    corpus = FLAGS.corpus or config["corpus"]
    import data

    data_dir = FLAGS.data_dir or config["data_dir"]
    try:
        documents = data.load_documents(
            corpus, FLAGS.split, data_dir, config.get("text_feature")
        ).texts
    except data.DatasetNotPreparedError as e:
        raise common.UsageError(str(e)) from e
    batch_size = max(1, min(FLAGS.batch_size, len(documents)))
    dataset = common.open_dataset(
        corpus,
        FLAGS.split,
        segment_length=lm.segment_length,
        batch_size=batch_size,
        tokenizer=FLAGS.tokenizer or config["tokenizer"],
        data_dir=FLAGS.data_dir or config["data_dir"],
        seed=0,
        repeat=False,
        text_feature=config.get("text_feature"),
        documents=documents,
    )
    store = getattr(dataset, "document_store", None)
    model = common.build_stream_model(lm, batch_size)
    step, sync = make_step(model)
    total_nll = total_tokens = total_bytes = 0.0
    segments = 0
    complete = True
    t0 = time.time()
    for batch in dataset:
        if FLAGS.max_segments and segments >= FLAGS.max_segments:
            complete = False
            break
        x = {
            "token_ids": batch["token_ids"].numpy(),
            "start_of_sequence": batch["start_of_sequence"].numpy(),
        }
        nll, count = step(x)
        total_nll += float(np.sum(keras.ops.convert_to_numpy(nll)))
        total_tokens += float(np.sum(keras.ops.convert_to_numpy(count)))
        total_bytes += float(np.sum(batch["num_bytes"].numpy()))
        segments += 1
        tty = sys.stderr.isatty()
        if tty or segments % 100 == 0:
            print(
                f"{chr(13) if tty else ''}segment {segments}: {total_tokens:.0f} tokens, "
                f"{total_nll / max(total_tokens, 1) / math.log(2):.4f} bits/token",
                end="" if tty else "\n",
                file=sys.stderr,
                flush=True,
            )
    if sys.stderr.isatty():
        print(file=sys.stderr)
    sync()
    words = None
    if store is not None:
        doc_bytes = sum(len(t) for t in store.texts)
        doc_words = sum(len(t.split()) for t in store.texts)
        words = doc_words if complete else doc_words * total_bytes / max(doc_bytes, 1)
    bits = total_nll / math.log(2)
    result = {
        "model_dir": FLAGS.model_dir,
        "corpus": corpus,
        "split": FLAGS.split,
        "documents": len(store.texts) if store is not None else None,
        "complete": complete,
        "segments": segments,
        "tokens": int(total_tokens),
        "bytes": int(total_bytes),
        "words": None if words is None else round(words, 1),
        "nats_per_token": total_nll / max(total_tokens, 1),
        "bits_per_token": bits / max(total_tokens, 1),
        "bits_per_byte": bits / max(total_bytes, 1),
        "word_perplexity": math.exp(total_nll / words) if words else None,
        "seconds": round(time.time() - t0, 1),
    }
    output = FLAGS.output or os.path.join(FLAGS.model_dir, f"eval_{FLAGS.split}.json")
    common.write_json(output, result)
    print(json.dumps(result, indent=2), flush=True)
    return result


main = common.binary_main(evaluate)


if __name__ == "__main__":
    app.run(main)
