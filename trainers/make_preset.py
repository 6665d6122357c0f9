"""Package a training run as a keras-hub preset directory (weights, config,
tokenizer, a model card to complete).

    python -m trainers.make_preset --model_dir runs/mini \
        --preset_dir brt_keras/presets/brt_books_mini

The run's `model.keras` (or its newest checkpoint) and its tokenizer ("bytes"
or the SentencePiece model named in the run's config.json) become a preset
that `BlockRecurrentCausalLM.from_preset(DIR)` and
`keras_hub.models.CausalLM.from_preset(DIR)` load; a preset directory inside
`brt_keras/presets/` loads by its name. An existing preset directory is left
alone unless `--overwrite`; the new one is written aside and moved in whole.
"""

from trainers import backend as _backend

_backend.select(main=__name__ == "__main__")

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from trainers import common  # noqa: E402

FLAGS = flags.FLAGS
common.define_common_flags()
flags.DEFINE_string("preset_dir", None, "Preset directory to write.")
flags.DEFINE_integer(
    "sequence_length", None, "Preprocessor length for fit (default: the run's segment)."
)
flags.DEFINE_bool("overwrite", False, "Replace an existing preset directory.")


def text_preprocessor(tokenizer, sequence_length):
    """The run's tokenizer ("bytes" or a SentencePiece path) as a
    preprocessor; a bad spec is a usage error."""
    from brt_keras.models import BlockRecurrentCausalLMPreprocessor

    try:
        return BlockRecurrentCausalLMPreprocessor.for_tokenizer(
            tokenizer, sequence_length
        )
    except ValueError as e:
        raise common.UsageError(f"{e} Pass --tokenizer.") from e


MODEL_CARD = """# {name}

`{preset}` at size `{size}` trained by `trainers.train` ({steps} steps) on the
`{corpus}` corpus, with the {tokenizer} tokenizer.

```python
from brt_keras import BlockRecurrentCausalLM

lm = BlockRecurrentCausalLM.from_preset("{name}")
print(lm.generate("It is a truth", max_length=200))
```

- Data: {corpus} (TODO: sources and their licence)
- Training: {steps} steps; command: `python -m trainers.train {flags}`
- Test bits/byte: TODO (`python -m trainers.evaluate --model_dir RUN`)
- Parameters: {params}
"""


def make_preset():
    if not FLAGS.model_dir or not FLAGS.preset_dir:
        raise common.UsageError("--model_dir and --preset_dir are required.")
    target = os.path.abspath(FLAGS.preset_dir)
    if os.path.exists(target) and os.listdir(target) and not FLAGS.overwrite:
        raise common.UsageError(
            f"{target} exists and is not empty; pass --overwrite to replace it."
        )
    config = common.read_config(FLAGS.model_dir)
    lm = common.load_lm(FLAGS.model_dir)
    tokenizer = FLAGS.tokenizer or config.get("tokenizer") or "bytes"
    lm.preprocessor = text_preprocessor(
        tokenizer, FLAGS.sequence_length or lm.segment_length
    )
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".preset-", dir=parent)
    try:
        lm.save_to_preset(scratch)
        summary_path = os.path.join(FLAGS.model_dir, "train_summary.json")
        summary = {}
        if os.path.exists(summary_path):
            with open(summary_path) as f:
                summary = json.load(f)
        flag_text = " ".join(
            f"--{k} {config[k]}" for k in ("preset", "size", "corpus") if k in config
        )
        card = MODEL_CARD.format(
            name=os.path.basename(target),
            preset=config.get("preset", "?"),
            size=config.get("size", "?"),
            steps=summary.get("steps", "?"),
            corpus=config.get("corpus", "?"),
            tokenizer=tokenizer if tokenizer != "bytes" else "byte (260 ids)",
            flags=flag_text,
            params=lm.backbone.count_params(),
        )
        with open(os.path.join(scratch, "README.md"), "w") as f:
            f.write(card)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    size = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(target)
        for f in files
    )
    print(f"wrote {target} ({size / 1e6:.2f} MB); complete README.md (the model card).")
    return target


main = common.binary_main(make_preset)


if __name__ == "__main__":
    app.run(main)
