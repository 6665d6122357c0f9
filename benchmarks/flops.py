"""Analytic model FLOPs of a BRT training step (matmuls and attention
einsums only; norms, softmax, gates' elementwise work are left out, as in
the usual "model FLOPs utilisation" convention).

One multiply-add counts 2 FLOPs; a training step counts 3x the forward pass
(forward, and the backward pass' two matmuls per forward matmul).
"""


def forward_flops_per_token(backbone):
    """Forward FLOPs per token of the backbone plus the tied readout."""
    d = backbone.hidden_dim
    hd = backbone.num_heads * backbone.head_dim
    f = backbone.intermediate_dim
    w = backbone.block_size
    s = backbone.num_states
    v = backbone.vocabulary_size
    recurrent = set(backbone.recurrent_indices)
    total = 2 * v * d  # tied readout
    for i in range(backbone.num_layers):
        # q, k, v, output projections and the two FFN matmuls.
        layer = 2 * (4 * d * hd + 2 * d * f)
        # Sliding-window tile: each query scores 2W keys, then mixes 2W values.
        layer += 2 * 2 * (2 * w) * hd
        cross = i in recurrent or backbone.feedback
        if cross:
            # Second query projection, doubled output input, S-state attention.
            layer += 2 * (2 * d * hd) + 2 * 2 * s * hd
        if i in recurrent:
            layer += state_update_flops(backbone) / w
        total += layer
    return total


def state_update_flops(backbone):
    """FLOPs of one state update (per block of W tokens)."""
    d = backbone.hidden_dim
    hd = backbone.num_heads * backbone.head_dim
    f = backbone.intermediate_dim
    w = backbone.block_size
    s = backbone.num_states
    flops = 2 * s * 4 * d * hd  # state q, k, v, q2 projections
    flops += 2 * 2 * s * s * hd  # state self-attention
    flops += 2 * 2 * s * (2 * w) * hd  # state -> 2W tokens cross-attention
    if backbone.gate_variant == "single":
        flops += 2 * s * (2 * hd * f + f * d)  # FFN replaces the projection
    else:
        flops += 2 * s * 2 * hd * d  # output projection of the concat
        if backbone.gate_variant == "dual":
            flops += 2 * s * 2 * d * f
    if backbone.gate_type == "lstm":
        # Input and forget gates: two Dense layers from the gate's hidden
        # input (the concat, or the FFN hidden layer for "single"/FFN gate).
        first = f if backbone.gate_variant == "single" else 2 * hd
        flops += 2 * 2 * s * first * d
        if backbone.gate_variant == "dual":
            flops += 2 * 2 * s * f * d
    return flops


def train_flops(backbone, tokens):
    """Model FLOPs of one training step over `tokens` tokens."""
    return 3 * forward_flops_per_token(backbone) * tokens


def forward_flops(backbone, tokens):
    return forward_flops_per_token(backbone) * tokens
