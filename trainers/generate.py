"""Sample text from a trained model or a preset: a prompt string in, text out.

    python -m trainers.generate --model_dir runs/mini --prompt "It was" \
        --max_new_tokens 200 --sampler top_p --seed 0
    python -m trainers.generate --preset brt_books_mini --prompt "It was"

`--model_dir` is a run directory of `trainers.train` (its tokenizer comes
from the run's config) or a preset directory; `--preset` a preset name
shipped in `brt_keras/presets/` or a preset directory. Both go through
`BlockRecurrentCausalLM.generate` on text, as in Python.
"""

from trainers import backend as _backend

_backend.select(main=__name__ == "__main__")

import os  # noqa: E402
import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from trainers import common  # noqa: E402

FLAGS = flags.FLAGS
common.define_common_flags()
flags.DEFINE_string("preset", None, "A shipped preset name or a preset directory.")
flags.DEFINE_string("prompt", "The ", "Prompt text.")
flags.DEFINE_integer("max_new_tokens", 200, "Tokens to sample.")
flags.DEFINE_enum(
    "sampler", "top_p", ["greedy", "random", "top_k", "top_p"], "keras-hub sampler."
)


def load_text_lm():
    """The LM with a text preprocessor attached."""
    from brt_keras import BlockRecurrentCausalLM
    from brt_keras.models import BlockRecurrentCausalLMPreprocessor

    if FLAGS.preset:
        try:
            return BlockRecurrentCausalLM.from_preset(FLAGS.preset)
        except ValueError as e:
            raise common.UsageError(str(e)) from e
    if not FLAGS.model_dir:
        raise common.UsageError("--model_dir or --preset is required.")
    if os.path.exists(os.path.join(FLAGS.model_dir, "task.json")):
        return BlockRecurrentCausalLM.from_preset(FLAGS.model_dir)
    config = common.read_config(FLAGS.model_dir)
    lm = common.load_lm(FLAGS.model_dir)
    tokenizer = FLAGS.tokenizer or config.get("tokenizer") or "bytes"
    try:
        lm.preprocessor = BlockRecurrentCausalLMPreprocessor.for_tokenizer(
            tokenizer, lm.segment_length
        )
    except ValueError as e:
        raise common.UsageError(f"{e} Pass --tokenizer.") from e
    return lm


def generate(out=sys.stdout):
    if not FLAGS.prompt:
        raise common.UsageError("--prompt is empty; give at least one character.")
    lm = load_text_lm()
    text = lm.generate(
        FLAGS.prompt,
        max_new_tokens=FLAGS.max_new_tokens,
        sampler=FLAGS.sampler,
        seed=FLAGS.seed,
    )
    out.write(text + "\n")
    out.flush()
    return text


main = common.binary_main(generate)


if __name__ == "__main__":
    app.run(main)
