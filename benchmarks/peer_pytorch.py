"""brt_keras against the PyPI package block-recurrent-transformer-pytorch
0.4.4 (PyTorch, CPU torch 2.13.0, in its own venv `.venv-peer`, created here
if missing), at equal dimensions: training tokens/s and generation
ms/token at 8k context. Targets: >= 1.5x faster training, >= 10x faster
generation.

Configuration mapping (`rec_fixed_skip` at `--size` -> the peer):
d -> dim, layers -> depth, H -> heads, Dh -> dim_head, F/d -> ff_mult (the
peer's GEGLU with inner 2F/3 has the same parameter count as our ReLU FFN of
width F), W -> block_width, S -> num_state_vectors, L -> max_seq_len, V ->
num_tokens, our recurrent layer index i (0-based) -> recurrent_layers=(i+1,).
What differs and is not mapped: the peer attends to the previous block's
memory plus the causal current block (up to 2W keys, not exactly W), uses
rotary positions (not T5 buckets), LayerNorm, GEGLU, a single fixed-ish gate
of its own, and Adam here vs our Adafactor. Its `generate` re-runs the
forward over every token of the current segment for each new token (no
K/V cache), so its cost per token grows with the in-segment position j; we
measure forward(j tokens) at several j after an 8k-token prefill, and report
both its best case (j=1, right after a segment boundary) and its mean over a
segment (trapezoid over the sampled j).

    python -m benchmarks.peer_pytorch [--quick]
"""

import json
import os
import subprocess
import sys

import numpy as np

from benchmarks import common
from benchmarks import generation
from benchmarks import step_time

PEER_REQUIREMENTS = ["torch==2.13.0", "block-recurrent-transformer-pytorch==0.4.4"]


def ensure_peer_venv():
    """Creates `.venv-peer` with the pinned peer stack if it is missing."""
    python = common.python_for_peer()
    check = [python, "-c", "import torch, block_recurrent_transformer_pytorch"]
    if (
        os.path.exists(python)
        and subprocess.run(check, capture_output=True).returncode == 0
    ):
        return python
    venv = os.path.dirname(os.path.dirname(python))
    common.log(f"[peer] creating {venv} with {PEER_REQUIREMENTS} ...")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [python, "-m", "pip", "install", "--quiet"]
    # torch first, pinned, so the package cannot pull a CUDA build of torch.
    subprocess.run(pip + [PEER_REQUIREMENTS[0]], check=True)
    subprocess.run(pip + PEER_REQUIREMENTS, check=True)
    return python


def peer_config(lm):
    b = lm.backbone
    return {
        "dim": b.hidden_dim,
        "depth": b.num_layers,
        "heads": b.num_heads,
        "dim-head": b.head_dim,
        "ff-mult": b.intermediate_dim / b.hidden_dim,
        "block": b.block_size,
        "states": b.num_states,
        "segment": lm.segment_length,
        "vocab": b.vocabulary_size,
        "recurrent-layer": b.recurrent_indices[0] + 1,
    }


def run_peer(python, config, steps, context, positions, seed):
    cmd = [python, os.path.join(os.path.dirname(__file__), "peer_worker.py")]
    for k, v in config.items():
        cmd += [f"--{k}", str(v)]
    cmd += ["--steps", str(steps), "--context", str(context)]
    cmd += ["--positions", ",".join(map(str, positions)), "--seed", str(seed)]
    common.log("[peer] " + " ".join(cmd[1:]))
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"peer worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def segment_mean(ms_by_position, segment):
    """Mean cost per token over in-segment positions 1..L, trapezoid over
    the sampled positions (cost is ~linear in j)."""
    js = sorted(int(j) for j in ms_by_position)
    ms = [
        ms_by_position[str(j)] if str(j) in ms_by_position else ms_by_position[j]
        for j in js
    ]
    return float(np.trapezoid(ms, js) / (js[-1] - js[0])) if len(js) > 1 else ms[0]


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", default="small_37m")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.context, args.new_tokens = "tiny", 2, 64, 8
    import keras

    python = ensure_peer_venv()
    keras.utils.set_random_seed(args.seed)
    lm = common.build_lm("rec_fixed_skip", args.size)
    config = peer_config(lm)
    segment = lm.segment_length
    positions = sorted({1, segment // 4, segment // 2, 3 * segment // 4, segment - 1})

    # One model in memory at a time (this machine has 24 GiB): our train step
    # in a child process, then the peer's worker, then our decoding here.
    common.log("[peer] ours: training step ...")
    # The peer has no dropout: ours runs without it too (see step_time for
    # the cost of dropout here).
    ours_train = step_time.measure_isolated(
        "rec_fixed_skip", args.size, None, segment, args.steps, args.seed, 0.0
    )
    if "error" in ours_train:
        raise SystemExit(f"our train step failed: {ours_train['error']}")
    common.log(f"  ours {ours_train['step_s']:.3f} s/step")
    common.log("[peer] peer package ...")
    peer = run_peer(python, config, args.steps, args.context, positions, args.seed)
    common.log("[peer] ours: generation ...")
    ours_gen = generation.decode_timing(lm, args.context, args.new_tokens, args.seed)

    ours_tps = segment / ours_train["step_s"]
    peer_tps = peer["train_tokens_per_s"]
    gen_peer = peer["generation_ms_by_in_segment_position"]
    peer_best = min(gen_peer.values())
    peer_mean = segment_mean(gen_peer, segment)
    ours_ms = ours_gen["amortised_ms_per_token"]
    train_x = ours_tps / peer_tps
    gen_x_mean = peer_mean / ours_ms
    gen_x_best = peer_best / ours_ms
    rows = [
        [
            "training tokens/s",
            ours_tps,
            peer_tps,
            train_x,
            ">= 1.5x",
            "met" if train_x >= 1.5 else "NOT met",
        ],
        [
            f"generation ms/token @ {args.context} (peer mean over segment)",
            ours_ms,
            peer_mean,
            gen_x_mean,
            ">= 10x",
            "met" if gen_x_mean >= 10 else "NOT met",
        ],
        [
            "generation ms/token (peer best case, j=1)",
            ours_ms,
            peer_best,
            gen_x_best,
            "(info)",
            "",
        ],
        ["parameters", ours_train["params"], peer["params"], None, "", ""],
    ]
    notes = [
        f"mapping: rec_fixed_skip {args.size} -> peer {config}",
        "peer ms per token by in-segment position j: "
        + ", ".join(f"{j}: {v:.1f}" for j, v in gen_peer.items()),
        f"peer torch {peer['torch']} with {peer['threads']} threads; Adam; ours "
        f"Keras {keras.__version__} on {keras.backend.backend()}, XLA, Adafactor",
    ]
    fig, axes = common.new_figure(ncols=2, width=5)
    axes[0].bar(["brt_keras", "peer"], [ours_tps, peer_tps], color=["C0", "C1"])
    axes[0].set_ylabel("training tokens/s")
    axes[0].set_title(f"Training, {args.size}, segment {segment}")
    js = sorted(int(j) for j in gen_peer)
    axes[1].plot(
        js,
        [gen_peer[str(j)] if str(j) in gen_peer else gen_peer[j] for j in js],
        "s--",
        color="C1",
        label="peer",
    )
    axes[1].axhline(ours_ms, color="C0", label="brt_keras (flat)")
    axes[1].set_xlabel("position in the current segment")
    axes[1].set_ylabel("ms per generated token")
    axes[1].set_yscale("log")
    axes[1].set_title(f"Generation after {args.context} tokens")
    axes[1].legend()
    png = common.save_figure(fig, "peer_pytorch", args.out_dir)
    common.report(
        "peer_pytorch",
        "brt_keras vs block-recurrent-transformer-pytorch 0.4.4",
        ["measure", "brt_keras", "peer", "ours / peer speed-up", "target", "status"],
        rows,
        {
            "ours_train": ours_train,
            "ours_generation": ours_gen,
            "peer": peer,
            "peer_config": config,
            "plot": png,
        },
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
