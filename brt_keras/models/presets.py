"""Every variant of the paper's Table 1 at every size of the paper.

A preset is a variant (which layers are recurrent, which gate, window and
segment) combined with a size. `preset_config` returns the backbone config
plus `segment_length`, the training segment L of that variant.
"""

# Sizes: meliad `size/*.gin`; "tiny" is ours for tests (and "mini" a CPU demo).
SIZES = {
    "tiny": dict(
        num_layers=2,
        hidden_dim=64,
        num_heads=4,
        head_dim=16,
        intermediate_dim=128,
        block_size=8,
        num_states=8,
        vocabulary_size=260,
    ),
    "mini": dict(
        num_layers=4,
        hidden_dim=128,
        num_heads=4,
        head_dim=32,
        intermediate_dim=512,
        block_size=64,
        num_states=64,
        vocabulary_size=260,
    ),
    "small_37m": dict(
        num_layers=12, hidden_dim=512, num_heads=8, head_dim=64, intermediate_dim=2048
    ),
    "small_75m": dict(
        num_layers=12, hidden_dim=512, num_heads=8, head_dim=128, intermediate_dim=4096
    ),
    "medium_150m": dict(
        num_layers=12, hidden_dim=1024, num_heads=8, head_dim=128, intermediate_dim=4096
    ),
    "medium_300m": dict(
        num_layers=12,
        hidden_dim=1024,
        num_heads=16,
        head_dim=128,
        intermediate_dim=8192,
    ),
    "large_600m": dict(
        num_layers=12,
        hidden_dim=2048,
        num_heads=16,
        head_dim=128,
        intermediate_dim=8192,
    ),
    # The paper's "1.3B": tall_24L.gin over large_600M, recurrence at 9, 19.
    "large_1300m": dict(
        num_layers=24,
        hidden_dim=2048,
        num_heads=16,
        head_dim=128,
        intermediate_dim=8192,
        recurrent_layers=(9, 19),
    ),
}
PAPER_DEFAULTS = dict(
    block_size=512, num_states=512, vocabulary_size=32128, dropout=0.05
)
# Layer-stack parameters the paper's size files quote (4dHDh + 2dF per layer).
PAPER_PARAMS = {
    "small_37m": 37e6,
    "small_75m": 75e6,
    "medium_150m": 151e6,
    "medium_300m": 302e6,
    "large_600m": 605e6,
    "large_1300m": 1208e6,
}

# Variants: window multiplier (of the size's block), segment in blocks of
# 512-token windows, extra layers, recurrence.
VARIANTS = {
    "xl_512": dict(window=1, segment_blocks=1),
    "xl_1024": dict(window=2, segment_blocks=1),
    "xl_2048": dict(window=4, segment_blocks=1),
    "slide_12": dict(window=1, segment_blocks=8),
    "slide_13": dict(window=1, segment_blocks=8, extra_layers=1),
}
for _gate in ("fixed", "lstm"):
    for _variant in ("skip", "dual", "single"):
        VARIANTS[f"rec_{_gate}_{_variant}"] = dict(
            window=1,
            segment_blocks=8,
            gate_type=_gate,
            gate_variant=_variant,
            recurrent=True,
        )
VARIANTS["feedback_fixed_skip"] = dict(
    window=1,
    segment_blocks=8,
    gate_type="fixed",
    gate_variant="skip",
    recurrent=True,
    feedback=True,
)
VARIANTS["feedback_lstm_single"] = dict(
    window=1,
    segment_blocks=8,
    gate_type="lstm",
    gate_variant="single",
    recurrent=True,
    feedback=True,
)

# tiny and mini use 4 blocks per segment (spec section 11).
_SMALL_SEGMENT_BLOCKS = {"tiny": 4, "mini": 4}

CONFIG_KEYS = (
    "vocabulary_size",
    "num_layers",
    "hidden_dim",
    "num_heads",
    "head_dim",
    "intermediate_dim",
    "block_size",
    "num_states",
    "recurrent_layers",
    "gate_type",
    "gate_variant",
    "feedback",
    "dropout",
    "temperature_init",
    "temperature_parameterization",
    "temperature_lr_multiplier",
    "remat",
    "loss_chunk_tokens",
    "query_chunk_size",
)


def preset_config(variant, size="medium_150m", **overrides):
    """Backbone config for `variant` at `size`, plus `segment_length`.

    Overrides are backbone config keys (see `CONFIG_KEYS`) or
    `segment_length`.
    """
    if variant not in VARIANTS:
        raise ValueError(
            f"Unknown preset {variant!r}. Available: {', '.join(VARIANTS)}."
        )
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}. Available: {', '.join(SIZES)}.")
    unknown = set(overrides) - set(CONFIG_KEYS) - {"segment_length"}
    if unknown:
        raise ValueError(
            f"Unknown override(s) {sorted(unknown)}; use config keys "
            f"{', '.join(CONFIG_KEYS)} or segment_length."
        )
    v = VARIANTS[variant]
    config = dict(PAPER_DEFAULTS)
    config.update(SIZES[size])
    base_block = config["block_size"]
    config["block_size"] = base_block * v["window"]
    config["num_layers"] += v.get("extra_layers", 0)
    if v.get("recurrent"):
        config.setdefault("recurrent_layers", (-3,))
        config["gate_type"] = v["gate_type"]
        config["gate_variant"] = v["gate_variant"]
        config["feedback"] = v.get("feedback", False)
    else:
        config["recurrent_layers"] = ()
        config["num_states"] = 0
    blocks = _SMALL_SEGMENT_BLOCKS.get(size, 8) if v["segment_blocks"] > 1 else 1
    segment = base_block * blocks if blocks > 1 else config["block_size"]
    config.update(overrides)
    config.setdefault("segment_length", segment)
    if "block_size" in overrides and "segment_length" not in overrides:
        config["segment_length"] = config["block_size"] * (blocks if blocks > 1 else 1)
    if tuple(config.get("recurrent_layers", ())) and config.get("num_states", 0) <= 0:
        config["num_states"] = 512
    config["recurrent_layers"] = tuple(config.get("recurrent_layers", ()))
    return config


def parameter_count(config):
    """Parameters of a backbone config, counted without building it
    (embedding, every layer, final norm; checked against built models)."""
    d, h, dh, f = (
        config[k] for k in ("hidden_dim", "num_heads", "head_dim", "intermediate_dim")
    )
    hd, s, n = h * dh, config["num_states"], config["num_layers"]
    rec = {i % n for i in config["recurrent_layers"]}
    layer = 4 * d * hd + 2 * d * f + 2 * d + h + 32 * h  # qkv+o, ffn, norms, tau, t5
    total = config["vocabulary_size"] * d + d + n * layer
    for _ in rec:
        total += d * hd + hd * d + h  # token queries2, wider projection, tau2
        total += (
            4 * d * hd + d + 2 * s * d + 2 * h
        )  # state qkv+q2, norm, ids+init, taus
        variant, gate = config["gate_variant"], config["gate_type"]
        gate_params = d if gate == "fixed" else 2 * (2 * hd * d + d)
        ffn_gate = d if gate == "fixed" else 2 * (f * d + d)
        if variant == "skip":
            total += 2 * hd * d + gate_params
        elif variant == "dual":
            total += 2 * hd * d + gate_params + d + 2 * d * f + ffn_gate
        else:
            total += 2 * hd * f + f * d + ffn_gate
    if config.get("feedback"):
        total += (n - len(rec)) * (d * hd + hd * d + h)
    return total
