"""Runs inside .venv-peer (torch + block-recurrent-transformer-pytorch 0.4.4).

Measures the peer package's training step and generation cost and prints
one JSON object on stdout. Started by `benchmarks/peer_pytorch.py`; it
imports nothing from this repository.
"""

import argparse
import json
import os
import statistics
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim-head", type=int, default=64)
    p.add_argument("--ff-mult", type=float, default=4)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--states", type=int, default=512)
    p.add_argument("--segment", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=32128)
    p.add_argument("--recurrent-layer", type=int, default=10, help="1-based")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--positions", default="1,512,2048,4095")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch
    from block_recurrent_transformer_pytorch import BlockRecurrentTransformer

    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    model = BlockRecurrentTransformer(
        num_tokens=args.vocab,
        dim=args.dim,
        depth=args.depth,
        dim_head=args.dim_head,
        heads=args.heads,
        ff_mult=args.ff_mult,
        max_seq_len=args.segment,
        block_width=args.block,
        num_state_vectors=args.states,
        recurrent_layers=(args.recurrent_layer,),
    )
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(args.seed)

    def ids(length):
        return torch.randint(1, args.vocab, (1, length), generator=gen)

    # Training: one segment per step, memories and states carried.
    model.train()
    memories, states = [], []
    times = []
    for i in range(args.steps + 2):
        x = ids(args.segment + 1)
        t0 = time.perf_counter()
        loss, memories, states = model(
            x,
            return_loss=True,
            xl_memories=memories,
            states=states,
            return_memories_and_states=True,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i > 1:  # the first two steps warm up allocators
            times.append(time.perf_counter() - t0)
    train_step_s = statistics.median(times)

    # Generation: the package's `generate` re-runs `forward` over every token
    # of the current segment so far (no per-token cache), so a token at
    # in-segment position j costs one forward over j tokens. Prefill the
    # context segment by segment, then time forward(j tokens) at positions j.
    model.eval()
    gen_times = {}
    with torch.no_grad():
        memories, states = [], []
        t0 = time.perf_counter()
        for _ in range(args.context // args.segment):
            _, memories, states = model(
                ids(args.segment),
                xl_memories=memories,
                states=states,
                return_memories_and_states=True,
            )
        prefill_s = time.perf_counter() - t0
        for j in [int(v) for v in args.positions.split(",")]:
            x = ids(j)
            model(x, xl_memories=memories, states=states)  # warm
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model(x, xl_memories=memories, states=states)
                ts.append(time.perf_counter() - t0)
            gen_times[j] = 1e3 * statistics.median(ts)
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "params": params,
                "train_step_s": train_step_s,
                "train_step_times_s": times,
                "train_tokens_per_s": args.segment / train_step_s,
                "prefill_s": prefill_s,
                "generation_ms_by_in_segment_position": gen_times,
                "config": vars(args),
            }
        )
    )


if __name__ == "__main__":
    main()
