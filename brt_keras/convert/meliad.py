"""Load google-research/meliad (JAX/Flax) parameters into brt_keras.

`params` is a flat dict from the Flax path joined by "/" (e.g.
`"params/tbase/_kvq/keys_layer/kernel"`) to an array, as a meliad checkpoint
holds them and as the golden files in `tests/golden/` store them.
"""

import numpy as np

from brt_keras.layers.block_recurrent_layer import BlockRecurrentLayer
from brt_keras.layers.sliding_window_layer import SlidingWindowLayer


def _token_side(layer, prefix):
    """Flax paths of a token-side TransformerBase (`tbase`)."""
    kvq = prefix + "tbase/_kvq/"
    paths = {
        kvq + "pre_attn_layernorm/scale": layer.pre_attn_norm.scale,
        kvq + "queries_layer/kernel": layer.query_dense.kernel,
        kvq + "keys_layer/kernel": layer.key_dense.kernel,
        kvq + "values_layer/kernel": layer.value_dense.kernel,
        kvq + "attention_scale": layer.self_attention.temperature,
        prefix + "tbase/post_attn_mlp/output_layer/kernel": layer.output_dense.kernel,
        prefix + "tbase/pre_ffn_layernorm/scale": layer.ffn_norm.scale,
        prefix + "tbase/ffn/hidden0/kernel": layer.ffn_hidden.kernel,
        prefix + "tbase/ffn/output_layer/kernel": layer.ffn_output.kernel,
        prefix + "relative_positions/rel_embedding": (
            layer.self_attention.relative_bias.rel_embedding
        ),
    }
    if layer.cross_attention:
        paths[kvq + "queries2_layer/kernel"] = layer.query2_dense.kernel
        paths[prefix + "tbase/attention_scale2"] = layer.temperature2
    return paths


def _gate(gate, prefix):
    if gate.gate_type == "fixed":
        return {prefix + "gate_bias": gate.gate_bias}
    paths = {}
    for name, dense in (
        ("input_gate", gate.input_gate),
        ("forget_gate", gate.forget_gate),
    ):
        paths[f"{prefix}{name}/kernel"] = dense.kernel
        paths[f"{prefix}{name}/bias"] = dense.bias
    return paths


def layer_paths(layer, prefix="params/"):
    """`{flax path: keras variable}` for one of our layers."""
    if isinstance(layer, SlidingWindowLayer):
        return _token_side(layer, prefix)
    cell = layer.cell
    paths = _token_side(cell.token_layer, prefix)
    kvq = prefix + "recurrent_tbase/_kvq/"
    rec = prefix + "recurrent_tbase/"
    paths.update(
        {
            kvq + "pre_attn_layernorm/scale": cell.state_norm.scale,
            kvq + "queries_layer/kernel": cell.state_query_dense.kernel,
            kvq + "keys_layer/kernel": cell.state_key_dense.kernel,
            kvq + "values_layer/kernel": cell.state_value_dense.kernel,
            kvq + "queries2_layer/kernel": cell.state_query2_dense.kernel,
            kvq + "position_embeddings": cell.state_ids,
            kvq + "attention_scale": cell.state_temperature,
            rec + "attention_scale2": cell.state_temperature2,
            prefix + "recurrent_initial_state": cell.initial_state,
        }
    )
    if cell.gate_variant in ("skip", "dual"):
        paths[rec + "post_attn_mlp/output_layer/kernel"] = (
            cell.state_output_dense.kernel
        )
        paths.update(_gate(cell.gate, rec + "post_attn_mlp/"))
    if cell.gate_variant in ("dual", "single"):
        paths[rec + "ffn/hidden0/kernel"] = cell.state_ffn_hidden.kernel
        paths[rec + "ffn/output_layer/kernel"] = cell.state_ffn_output.kernel
    if cell.gate_variant == "dual":
        paths[rec + "pre_ffn_layernorm/scale"] = cell.state_ffn_norm.scale
        paths.update(_gate(cell.ffn_gate, rec + "ffn/"))
    if cell.gate_variant == "single":
        paths.update(_gate(cell.gate, rec + "ffn/"))
    return paths


def backbone_paths(backbone, prefix="params/"):
    """`{flax path: keras variable}` for a whole `BlockRecurrentBackbone`."""
    paths = {
        prefix + "embed/embedding": backbone.token_embedding.embeddings,
        prefix + "final_layernorm/scale": backbone.final_norm.scale,
    }
    for i, layer in enumerate(backbone.transformer_layers):
        paths.update(layer_paths(layer, f"{prefix}transformer{i}/"))
    return paths


def assign_params(paths, params):
    """Assigns `params` to the variables in `paths`; one ValueError lists
    every missing, unexpected or misshaped parameter."""
    params = {k: v for k, v in params.items() if k.startswith("params/")}
    missing = sorted(set(paths) - set(params))
    unexpected = sorted(set(params) - set(paths))
    misshaped = [
        f"{k}: checkpoint {tuple(np.shape(params[k]))} vs model {tuple(paths[k].shape)}"
        for k in sorted(set(paths) & set(params))
        if tuple(np.shape(params[k])) != tuple(paths[k].shape)
    ]
    if missing or unexpected or misshaped:
        lines = []
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("misshaped", misshaped),
        ):
            if items:
                lines.append(f"{title} ({len(items)}): " + ", ".join(items))
        raise ValueError(
            "meliad parameters do not fit this configuration; check "
            "num_heads/head_dim/num_states/gate_type/gate_variant/feedback. "
            + "; ".join(lines)
        )
    for k, variable in paths.items():
        variable.assign(np.asarray(params[k], dtype=variable.dtype))


def layer_from_meliad(
    params,
    *,
    hidden_dim,
    num_heads,
    head_dim,
    intermediate_dim,
    block_size,
    num_states=0,
    gate_type=None,
    gate_variant=None,
):
    """One meliad `TransformerLayer` as a brt_keras layer.

    Returns a `BlockRecurrentLayer` when `num_states > 0` (gate_type is the
    paper's "fixed" or "lstm"; meliad's "bias" is accepted for "fixed"),
    else a `SlidingWindowLayer`. Both offer `get_initial_state(batch_size)`
    and `call_with_state(x, state, start_of_sequence)`.
    """
    sizes = dict(
        hidden_dim=hidden_dim,
        num_heads=num_heads,
        head_dim=head_dim,
        intermediate_dim=intermediate_dim,
        block_size=block_size,
    )
    if num_states > 0:
        gate_type = {"bias": "fixed"}.get(gate_type, gate_type or "fixed")
        layer = BlockRecurrentLayer(
            num_states=num_states,
            gate_type=gate_type,
            gate_variant=gate_variant or "skip",
            **sizes,
        )
    else:
        layer = SlidingWindowLayer(**sizes)
    layer.build((None, block_size, hidden_dim))
    assign_params(layer_paths(layer), params)
    return layer


def state_from_meliad(collection, prefix="state/"):
    """meliad "state" collection (flat dict, test-mode cache) -> our state.

    Accepts one layer's collection (`state/previous_keys_test`, ...) or a
    whole DecoderStack's (`state/transformer{i}/...`); returns a layer state
    dict or a model state `{"layer_i": ...}` respectively.
    """

    def one(p):
        out = {
            "keys": np.asarray(collection[p + "previous_keys_test"]),
            "values": np.asarray(collection[p + "previous_values_test"]),
        }
        if p + "recurrent_state_test" in collection:
            out["recurrent_state"] = np.asarray(collection[p + "recurrent_state_test"])
        return out

    if prefix + "previous_keys_test" in collection:
        return one(prefix)
    layers = sorted(
        {k[len(prefix) :].split("/")[0] for k in collection if k.startswith(prefix)}
    )
    return {
        f"layer_{name[len('transformer') :]}": one(f"{prefix}{name}/")
        for name in layers
    }


def state_to_meliad(state, prefix="state/"):
    """Our layer or model state -> a flat meliad "state" collection (test
    mode; the train-mode entries are zeros of the same shape)."""

    def one(p, s):
        out = {}
        for ours, theirs in (
            ("keys", "previous_keys"),
            ("values", "previous_values"),
            ("recurrent_state", "recurrent_state"),
        ):
            if ours in s:
                value = np.asarray(s[ours])
                out[f"{p}{theirs}_test"] = value
                out[f"{p}{theirs}_train"] = np.zeros_like(value)
        return out

    if "keys" in state:
        return one(prefix, state)
    out = {}
    for name, s in state.items():
        out.update(one(f"{prefix}transformer{name[len('layer_') :]}/", s))
    return out


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        key = key.decode() if isinstance(key, bytes) else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


def _read_checkpoint(directory):
    """Flat params from the newest `checkpoint_<step>` file (Flax msgpack)
    in a meliad model directory."""
    import glob
    import os
    import re

    files = [
        f
        for f in glob.glob(os.path.join(directory, "checkpoint_*"))
        if re.search(r"checkpoint_\d+$", f)
    ]
    if not files:
        raise ValueError(
            f"No meliad checkpoint_<step> file in {directory!r}; pass the "
            "directory meliad wrote (its --workdir) or a flat params dict."
        )
    newest = max(files, key=lambda f: int(f.rsplit("_", 1)[1]))
    with open(newest, "rb") as f:
        raw = f.read()
    try:
        from flax import serialization

        tree = serialization.msgpack_restore(raw)
    except ImportError:
        try:
            import msgpack
        except ImportError as e:
            raise ImportError(
                "Reading a meliad checkpoint needs `flax` or `msgpack`: "
                "pip install msgpack"
            ) from e

        def ext_hook(code, data):
            if code == 1:  # Flax's ndarray encoding: (shape, dtype, buffer)
                shape, dtype, buffer = msgpack.unpackb(data)
                return np.frombuffer(buffer, dtype=dtype).reshape(shape)
            return msgpack.ExtType(code, data)

        tree = msgpack.unpackb(raw, ext_hook=ext_hook, raw=False)
    flat = _flatten(tree)
    roots = [
        k[: -len("embed/embedding")] for k in flat if k.endswith("embed/embedding")
    ]
    if len(roots) != 1:
        raise ValueError(f"{newest}: cannot find a single embed/embedding table.")
    root = roots[0]
    return {
        "params/" + k[len(root) :]: v for k, v in flat.items() if k.startswith(root)
    }


def load_meliad_model(cls, params, segment_length=None, **config):
    """Builds `cls` (a BlockRecurrentCausalLM) from meliad DecoderStack
    params (flat dict or checkpoint directory) and backbone config keys."""
    from brt_keras.models.block_recurrent_backbone import BlockRecurrentBackbone

    if isinstance(params, str):
        params = _read_checkpoint(params)
    config = dict(config)
    if config.get("gate_type") == "bias":
        config["gate_type"] = "fixed"
    backbone = BlockRecurrentBackbone(**config)
    assign_params(backbone_paths(backbone), params)
    return cls(backbone, segment_length=segment_length)
