"""Evaluate a trained model the paper's way: whole test documents streamed
through the model with carried state.

    python -m trainers.evaluate --model_dir runs/mini [--split test --batch_size 4]

Each slot reads one document from its first segment to its last, carrying the
state; a slot that has run out of documents reads padding (not counted).
Prints and writes ``<model_dir>/eval_<split>.json`` with nats/bits per token,
bits per byte (UTF-8 bytes of the text the scored tokens cover),
word-level perplexity (exp of the total NLL over the whitespace-separated
words of the documents), per-document totals (``per_document``, by index in
the split, to pair runs; with each document's bits and tokens per position
bucket, for curves over one fixed set of documents) and 95 % bootstrap
intervals over documents.

    --reset_state=every_segment   the memory ablation: every layer's cache and the
                                  recurrent state reset at each segment start
                                  (written to eval_<split>_reset_every_segment.json)
    --by_position                 bits/token in log2 position buckets (0-255,
                                  256-511, ...) in the JSON and a PNG; --compare
                                  a.json,b.json adds other evaluations' curves

See trainers/scoring.py for the definitions.
"""

from trainers import backend as _backend

_backend.select(main=__name__ == "__main__")

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from trainers import common  # noqa: E402
from trainers import paths  # noqa: E402
from trainers import scoring  # noqa: E402

FLAGS = flags.FLAGS
common.define_common_flags()
flags.DEFINE_string("corpus", None, "Corpus (default: the training corpus).")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_integer("batch_size", 4, "Documents streamed in parallel.")
flags.DEFINE_integer(
    "max_segments", 0, "Stop after this many batches (0: all documents)."
)
flags.DEFINE_integer(
    "max_tokens",
    0,
    "Stop once this many tokens are scored (0: all documents). Unlike "
    "--max_segments it does not count the idle slots of a split with few documents.",
)
flags.DEFINE_string(
    "output",
    None,
    "JSON path (default <model_dir>/eval_<split>.json; "
    "eval_<split>_reset_every_segment.json with --reset_state=every_segment).",
)
flags.DEFINE_enum(
    "reset_state",
    "never",
    list(scoring.RESET_MODES),
    "never: carry the state through each document; every_segment: reset every "
    "layer's cache and the recurrent state at each segment start (memory ablation).",
)
flags.DEFINE_bool(
    "by_position",
    False,
    "Bits/token by position in the document (log2 buckets) in the JSON and a PNG.",
)
flags.DEFINE_list(
    "compare",
    [],
    "Eval JSONs (written with --by_position) whose curves join this one in the PNG.",
)
flags.DEFINE_string("label", None, "Curve label (default: the model_dir's name).")
flags.DEFINE_integer(
    "bootstrap",
    1000,
    "Bootstrap resamples over documents for 95 % intervals (0: none).",
)


def _progress(scores):
    tty = sys.stderr.isatty()
    if tty or scores.segments % 100 == 0:
        print(
            f"{chr(13) if tty else ''}segment {scores.segments}: {scores.total_tokens} tokens, "
            f"{scores.bits_per_token:.4f} bits/token",
            end="" if tty else "\n",
            file=sys.stderr,
            flush=True,
        )


def _read_compare(files):
    curves = []
    for path in files:
        try:
            other = json.loads(paths.read_text(path))
        except (OSError, ValueError) as e:
            raise common.UsageError(f"--compare {path}: {e}") from e
        if not other.get("by_position"):
            raise common.UsageError(
                f"--compare {path} has no by_position; evaluate that model with --by_position."
            )
        curves.append((other.get("label") or path, other["by_position"]))
    return curves


def evaluate():
    if not FLAGS.model_dir:
        raise common.UsageError("--model_dir is required.")
    compare = _read_compare(FLAGS.compare)
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
    if not documents:
        raise common.UsageError(f"{corpus}/{FLAGS.split} has no documents.")
    batch_size = max(1, min(FLAGS.batch_size, len(documents)))
    t0 = time.time()
    scores = scoring.score_documents(
        lm,
        documents,
        batch_size=batch_size,
        tokenizer=FLAGS.tokenizer or config["tokenizer"],
        reset_state=FLAGS.reset_state,
        max_segments=FLAGS.max_segments,
        max_tokens=FLAGS.max_tokens,
        progress=_progress,
    )
    if sys.stderr.isatty():
        print(file=sys.stderr)
    total_nll, total_tokens = scores.total_nll, scores.total_tokens
    total_bytes = scores.total_bytes
    doc_bytes = sum(len(t) for t in documents)
    doc_words = sum(len(t.split()) for t in documents)
    complete = scores.complete
    words = doc_words if complete else doc_words * total_bytes / max(doc_bytes, 1)
    bits = total_nll / math.log(2)
    label = FLAGS.label or os.path.basename(os.path.normpath(FLAGS.model_dir))
    if FLAGS.reset_state != "never":
        label += f" (reset {FLAGS.reset_state})"
    doc_bits = scores.doc_nll / math.log(2)
    result = {
        "model_dir": FLAGS.model_dir,
        "label": label,
        "corpus": corpus,
        "split": FLAGS.split,
        "reset_state": FLAGS.reset_state,
        "documents": len(documents),
        "complete": complete,
        "segments": scores.segments,
        "tokens": int(total_tokens),
        "bytes": int(total_bytes),
        "words": round(words, 1),
        "nats_per_token": total_nll / max(total_tokens, 1),
        "bits_per_token": bits / max(total_tokens, 1),
        "bits_per_byte": bits / max(total_bytes, 1),
        "word_perplexity": math.exp(total_nll / words) if words else None,
        "bootstrap": None,
        "per_document": scores.per_document(),
        "seconds": round(time.time() - t0, 1),
    }
    if FLAGS.bootstrap > 0:
        result["bootstrap"] = {
            "samples": FLAGS.bootstrap,
            "level": 0.95,
            "over": "documents",
            "bits_per_token": scoring.bootstrap_interval(
                doc_bits, scores.doc_tokens, FLAGS.bootstrap
            ),
            "bits_per_byte": scoring.bootstrap_interval(
                doc_bits, scores.doc_bytes, FLAGS.bootstrap
            ),
        }
    suffix = "" if FLAGS.reset_state == "never" else f"_reset_{FLAGS.reset_state}"
    output = FLAGS.output or paths.join(
        FLAGS.model_dir, f"eval_{FLAGS.split}{suffix}.json"
    )
    if FLAGS.by_position:
        result["by_position"] = scores.by_position()
        plot = os.path.splitext(output)[0] + "_by_position.png"
        with paths.staged_dir(paths.dirname(plot)) as local:
            scoring.plot_by_position(
                [(label, result["by_position"])] + compare,
                os.path.join(local, paths.basename(plot)),
                f"{corpus}/{FLAGS.split}: bits/token by position",
            )
        result["by_position_plot"] = plot
    common.write_json(output, result)
    shown = {k: v for k, v in result.items() if k != "per_document"}
    print(json.dumps(shown, indent=2), flush=True)
    return result


main = common.binary_main(evaluate)


if __name__ == "__main__":
    app.run(main)
