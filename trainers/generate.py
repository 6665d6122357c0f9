"""Sample text from a trained model, streamed as it is produced.

    python -m trainers.generate --model_dir runs/mini --prompt "It was" \
        --max_new_tokens 200 --sampler top_p --seed 0
"""

from trainers import backend as _backend

_backend.select()

import sys  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from trainers import common  # noqa: E402

FLAGS = flags.FLAGS
common.define_common_flags()
flags.DEFINE_string("prompt", "The ", "Prompt text.")
flags.DEFINE_integer("max_new_tokens", 200, "Tokens to sample.")
flags.DEFINE_enum("sampler", "top_p", ["greedy", "top_k", "top_p"], "Sampler.")


def generate(out=sys.stdout):
    if not FLAGS.model_dir:
        raise common.UsageError("--model_dir is required.")
    import data

    config = common.read_config(FLAGS.model_dir)
    tok = data.get_tokenizer(FLAGS.tokenizer or config.get("tokenizer") or "bytes")
    lm = common.load_lm(FLAGS.model_dir)
    prompt_ids = np.asarray(tok.tokenize(FLAGS.prompt)).astype("int32")
    if prompt_ids.size == 0:
        raise common.UsageError("--prompt is empty; give at least one character.")
    out.write(FLAGS.prompt)
    out.flush()
    ids = []
    shown = ""
    for token in lm.generate_stream(
        prompt_ids[None], FLAGS.max_new_tokens, sampler=FLAGS.sampler, seed=FLAGS.seed
    ):
        ids.append(int(keras.ops.convert_to_numpy(token)[0]))
        text = (
            tok.detokenize(np.asarray(ids, "int32"))
            .numpy()
            .decode("utf-8", errors="ignore")
        )
        if len(text) > len(shown):
            out.write(text[len(shown) :])
            out.flush()
            shown = text
    out.write("\n")
    out.flush()
    return FLAGS.prompt + shown


main = common.binary_main(generate)


if __name__ == "__main__":
    app.run(main)
