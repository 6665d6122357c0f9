"""Export a trained model as a SavedModel that plain TensorFlow can serve.

    python -m trainers.export --model_dir runs/mini [--export_dir DIR]

Writes ``<export_dir>/saved_model`` with three endpoints, loadable with
``tf.saved_model.load`` and no brt_keras import:

* ``serve(token_ids int32 [B, T]) -> logits float32 [B, T, V]``: from a fresh
  state, any T (padded to a multiple of the block internally);
* ``initial_state(batch_size int32 []) -> state``: the learned initial state;
* ``stream(token_ids int32 [B, T], state) -> {"logits", <state names>}``:
  one segment (T a multiple of the block size) from a carried state;
  ``state`` is a dict of float32 tensors named ``layer_<i>__<key>``, and the
  output holds the new state under the same names beside ``logits``.

and a copy of the ``.keras`` file. The export runs on the TensorFlow backend
(the ``.keras`` file is backend-independent, so JAX-trained models export too).
"""

from trainers import backend as _backend

_backend.select(default="tensorflow", main=__name__ == "__main__")

import contextlib  # noqa: E402
import json  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from trainers import common  # noqa: E402
from trainers import paths  # noqa: E402

FLAGS = flags.FLAGS
common.define_common_flags()
flags.DEFINE_string(
    "export_dir", None, "Output directory (default <model_dir>/export)."
)


def state_names(template):
    return {
        f"{layer}__{key}": (layer, key)
        for layer in sorted(template)
        for key in sorted(template[layer])
    }


def dynamic_length_copy(lm):
    """The same model with the block loop not unrolled (a tf.while_loop), so
    the endpoints accept any number of blocks."""
    config = lm.get_config()
    config["backbone"]["config"]["unroll"] = False
    copy = type(lm).from_config(config)
    copy.set_weights(lm.get_weights())
    return copy


def export_lm(lm, export_dir):
    lm = dynamic_length_copy(lm)
    w = lm.backbone.block_size
    template = lm.get_initial_state(1)
    names = state_names(template)
    state_spec = {
        n: tf.TensorSpec(
            (None,) + tuple(template[layer][key].shape[1:]), tf.float32, name=n
        )
        for n, (layer, key) in names.items()
    }

    def to_nested(flat):
        nested = {}
        for n, (layer, key) in names.items():
            nested.setdefault(layer, {})[key] = flat[n]
        return nested

    def to_flat(nested):
        return {
            n: tf.cast(nested[layer][key], tf.float32)
            for n, (layer, key) in names.items()
        }

    def serve(token_ids):
        length = tf.shape(token_ids)[1]
        pad = (-length) % w
        ids = tf.pad(token_ids, [[0, 0], [0, pad]])
        state = lm.get_initial_state(tf.shape(ids)[0])
        logits, _ = lm.call_with_state(ids, state)
        return logits[:, :length]

    def initial_state(batch_size):
        return to_flat(lm.get_initial_state(batch_size))

    def stream(token_ids, state):
        tf.debugging.assert_equal(
            tf.shape(token_ids)[1] % w,
            0,
            message=f"stream: token_ids length must be a multiple of {w}",
        )
        logits, new_state = lm.call_with_state(token_ids, to_nested(state))
        return {"logits": logits, **to_flat(new_state)}

    archive = keras.export.ExportArchive()
    archive.track(lm)
    ids_spec = tf.TensorSpec((None, None), tf.int32, name="token_ids")
    archive.add_endpoint("serve", serve, input_signature=[ids_spec])
    archive.add_endpoint(
        "initial_state",
        initial_state,
        input_signature=[tf.TensorSpec((), tf.int32, name="batch_size")],
    )
    archive.add_endpoint("stream", stream, input_signature=[ids_spec, state_spec])
    path = paths.join(export_dir, "saved_model")
    paths.rmtree(path)
    archive.write_out(path, verbose=False)
    return path


def check_export(lm, path, seed=0):
    """Max |logits| difference between the SavedModel and Keras (serve and
    two stream segments)."""
    loaded = tf.saved_model.load(path)
    rng = np.random.RandomState(seed)
    seg = lm.segment_length
    ids = rng.randint(1, lm.backbone.vocabulary_size, (2, 2 * seg)).astype("int32")
    want = keras.ops.convert_to_numpy(lm(ids))
    got = loaded.serve(tf.constant(ids)).numpy()
    diffs = {"serve": float(np.max(np.abs(got - want)))}
    state = loaded.initial_state(tf.constant(2))
    out = []
    for part in np.split(ids, 2, axis=1):
        r = loaded.stream(tf.constant(part), state)
        out.append(r["logits"].numpy())
        state = {k: v for k, v in r.items() if k != "logits"}
    diffs["stream"] = float(np.max(np.abs(np.concatenate(out, 1) - want)))
    return diffs


def export():
    if not FLAGS.model_dir:
        raise common.UsageError("--model_dir is required.")
    if keras.backend.backend() != "tensorflow":
        raise common.UsageError(
            "export runs on --backend=tensorflow (the .keras file is backend-independent)."
        )
    lm = common.load_lm(FLAGS.model_dir)
    export_dir = FLAGS.export_dir or paths.join(FLAGS.model_dir, "export")
    with contextlib.ExitStack() as stack:
        out = export_dir
        if paths.tf_native(export_dir):
            paths.makedirs(export_dir)
        else:  # e.g. gs:// through gcsfs: written locally, checked, then uploaded
            paths.rmtree(paths.join(export_dir, "saved_model"))
            out = stack.enter_context(paths.staged_dir(export_dir))
        diffs = check_export(lm, export_lm(lm, out))
        common.save_keras(lm, paths.join(out, "model.keras"))
        result = {
            "saved_model": paths.join(export_dir, "saved_model"),
            "keras": paths.join(export_dir, "model.keras"),
            "max_abs_diff_vs_keras": diffs,
        }
        common.write_json(paths.join(out, "export.json"), result)
    print(json.dumps(result, indent=2), flush=True)
    return result


main = common.binary_main(export)


if __name__ == "__main__":
    app.run(main)
