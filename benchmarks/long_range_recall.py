"""Associative recall across blocks: rec_fixed_skip vs slide_12.

The task follows the published anchors (RMT/ARMT associative retrieval,
Zoology MQAR). Each example is one fresh document of `blocks` blocks of W
tokens:

- keys, values and filler come from disjoint vocabularies (ids
  `[2, 2+K)`, `[2+K, 2+K+V)`, then filler); id 1 is the optional query
  marker;
- the first block starts with P pairs `k1 v1 k2 v2 ...`
  (P distinct keys, values drawn with replacement), then filler;
- `gap` filler blocks follow (at least 2, and as many more as it takes to put
  every query beyond the sliding stack's receptive field, layers x W);
- the query block asks the keys again in a random order, each followed by
  its value (`k v` or, with `--query-marker`, `? k v`); only the value
  positions are scored (trained and measured).

A model without memory can only guess (chance 1/V); one that remembers the
*set* of values but not which key each belongs to (a "bag of values") and
crosses off those already answered scores `no_binding_accuracy` (about
1/P, 1/(P-1), ..., 1 by query); binding shows as a first-query accuracy well
above 1/P.

Levers (each opt-in, the default is the reference behaviour): attention
temperature init / log parameterization / learning-rate multiplier (model
config), a curriculum on pairs and gap, the recurrent layer's index, S,
heads, learning rate and schedule. `--recipe` selects the documented recipe;
`--ablation` runs the recipe and the recipe with each lever removed once.

    python -m benchmarks.long_range_recall [--quick] [--recipe] [--seeds 0,1,2]

Diagnostics, every `--eval-every` steps: per-query accuracy, the entropy of
the state's write attention (state -> tokens of the pair blocks), of the
query tokens' read attention (tokens -> state) and the temperatures; plotted
over training (`long_range_recall_diagnostics.png`).
"""

import json
import math
import os
import time

import numpy as np

from benchmarks import common

KEY0 = 2

# The recipe, as overrides of the parser defaults (see benchmarks/README.md).
RECIPE = dict(
    pairs=8,
    num_layers=3,
    recurrent_layer=1,
    window=16,
    num_states=16,
    temperature_init=8.0,
    temperature_parameterization="log",
    temperature_lr_multiplier=10.0,
    curriculum="2@0,4@0,8@0,8",
    advance_at=0.85,
    stop_at=0.98,
    steps=2000,
)
# What "removing a lever" resets it to (the reference / script default).
LEVER_DEFAULTS = dict(
    temperature_init=1.0,
    temperature_parameterization="linear",
    temperature_lr_multiplier=1.0,
    curriculum="",
    recurrent_layer=None,
    num_states=8,
)
LEVERS = {
    "temperature init 8": ("temperature_init",),
    "log temperature": ("temperature_parameterization",),
    "temperature lr x10": ("temperature_lr_multiplier",),
    "curriculum (2, 4, 8 pairs near the pairs first)": ("curriculum",),
    "recurrent layer 1 of 3": ("recurrent_layer",),
    "S = 16": ("num_states",),
}


# --------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------


def layout(w, num_layers, pairs, gap=2):
    """Block layout: `(pair_blocks, query_block, blocks)`.

    The gap (filler blocks between the last pair block and the query block)
    is at least `gap` and grows until the smallest key -> query distance
    exceeds the sliding stack's receptive field `num_layers * w`."""
    pair_blocks = max(1, math.ceil(2 * pairs / w))
    gap = max(gap, 2)
    while True:
        query_block = pair_blocks + gap
        if min_distance(w, pairs, query_block) > num_layers * w:
            return pair_blocks, query_block, query_block + 1
        gap += 1


def min_distance(w, pairs, query_block):
    """Tokens between the last pair's key and the first query position."""
    return query_block * w - (2 * pairs - 2)


def make_batch(
    rng,
    batch,
    w,
    pairs,
    num_keys,
    num_values,
    num_filler,
    query_block,
    blocks,
    query_marker=False,
):
    """Returns `(inputs, targets)` int32 `[B, blocks*W]`; `targets` is 0
    except at the positions whose next token is a queried value (the value
    itself there)."""
    if pairs > num_keys:
        raise ValueError(f"pairs={pairs} needs at least as many keys ({num_keys}).")
    stride = 3 if query_marker else 2
    if stride * pairs > w:
        raise ValueError(
            f"{pairs} queries of {stride} tokens do not fit in one block of "
            f"{w}; use fewer pairs or a larger window."
        )
    value0 = KEY0 + num_keys
    filler0 = value0 + num_values
    length = blocks * w
    ids = rng.integers(filler0, filler0 + num_filler, (batch, length))
    targets = np.zeros((batch, length), np.int64)
    rows = np.arange(batch)[:, None]
    keys = np.argsort(rng.random((batch, num_keys)), 1)[:, :pairs] + KEY0
    values = rng.integers(0, num_values, (batch, pairs)) + value0
    ids[:, 0 : 2 * pairs : 2] = keys
    ids[:, 1 : 2 * pairs : 2] = values
    order = np.argsort(rng.random((batch, pairs)), 1)
    start = query_block * w
    key_pos = start + stride * np.arange(pairs) + (stride - 2)
    if query_marker:
        ids[:, key_pos - 1] = 1
    ids[:, key_pos] = keys[rows, order]
    ids[:, key_pos + 1] = values[rows, order]
    # Input position p predicts token p+1: score the key positions.
    targets[:, key_pos] = values[rows, order]
    return ids.astype("int32"), targets.astype("int32")


def query_positions(w, pairs, query_block, query_marker=False):
    stride = 3 if query_marker else 2
    return query_block * w + stride * np.arange(pairs) + (stride - 2)


def no_binding_accuracy(pairs, num_values, samples=20000, seed=0):
    """Accuracy by query of the best model that remembers only the multiset
    of values of the pairs (no key -> value binding) and crosses off the
    values already answered in the query block: it guesses a most frequent
    remaining value. Monte Carlo over the task's value distribution."""
    rng = np.random.default_rng(seed)
    hits = np.zeros(pairs)
    for _ in range(samples):
        values = list(rng.integers(0, num_values, pairs))
        left = {}
        for v in values:
            left[v] = left.get(v, 0) + 1
        for j, v in enumerate(values):
            top = max(left.values())
            hits[j] += left.get(v, 0) == top and 1.0 / sum(
                c == top for c in left.values()
            )
            left[v] -= 1
            if not left[v]:
                del left[v]
    return hits / samples


def parse_curriculum(text, pairs, query_block, pair_blocks=1):
    """Stages `[(pairs, query_block), ...]` from `"P,P@G,..."`.

    `P` asks P pairs at the final query block; `P@G` asks them in the block
    `G` blocks after the pair block (`0`: the next block, within the sliding
    stack's reach, where the window can learn the key -> value lookup that
    the state's write later reuses). The last stage is always
    `(pairs, query_block)`; "" means no curriculum."""
    stages = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        p, _, gap = item.partition("@")
        block = pair_blocks + int(gap) if gap else query_block
        if not 1 <= int(p) <= pairs or not pair_blocks <= block <= query_block:
            raise ValueError(
                f"curriculum stage {item!r}: pairs must lie in [1, {pairs}] and "
                f"the gap in [0, {query_block - pair_blocks}]."
            )
        stages.append((int(p), block))
    if not stages or stages[-1] != (pairs, query_block):
        stages.append((pairs, query_block))
    return stages


# --------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------


def _entropy(p, axis=-1):
    p = np.clip(p, 1e-12, 1.0)
    return float(np.mean(-np.sum(p * np.log(p), axis=axis)))


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def attention_diagnostics(lm, x, pair_blocks, query_pos):
    """Entropy (nats) of the recurrent layer's write attention (state ->
    the 2W keys, at the blocks that hold pairs) and of the query tokens' read
    attention (tokens -> the S state vectors), and the mean temperatures.
    Recomputed eagerly from the layer's own projections."""
    from keras import ops

    from brt_keras.layers.attention_ops import temperature_value

    backbone = lm.backbone
    r = backbone.recurrent_indices[0]
    h = backbone.token_embedding(x)
    state = backbone.get_initial_state(x.shape[0])
    for i in range(r):
        h, _ = backbone.transformer_layers[i].call_with_state(h, state[f"layer_{i}"])
    layer = backbone.transformer_layers[r]
    cell, tokens = layer.cell, layer.cell.token_layer
    w = layer.block_size
    _, k, v, q2 = tokens.project(h)
    rec = state[f"layer_{r}"]
    prev_k, prev_v = rec["keys"], rec["values"]
    s = rec["recurrent_state"]
    tau_write = np.asarray(cell._temperature(cell.state_temperature2))
    tau_read = np.asarray(
        temperature_value(
            tokens.temperature2,
            tokens.temperature_parameterization,
            tokens.temperature_lr_multiplier,
        )
    )
    write_entropy = []
    query_block = int(query_pos[0]) // w
    read_entropy = None
    for t in range(query_block + 1):
        projected = cell.project_state(s)
        k_t = k[:, t * w : (t + 1) * w]
        v_t = v[:, t * w : (t + 1) * w]
        keys2 = ops.concatenate([prev_k, k_t], 1)
        if t < pair_blocks:
            rq2 = np.asarray(projected[3])  # [B, S, H, Dh]
            logits = np.einsum("bshd,bkhd->bhsk", rq2, np.asarray(keys2))
            write_entropy.append(_entropy(_softmax(logits * tau_write[:, None, None])))
        if t == query_block:
            rk = np.asarray(projected[1])  # [B, S, H, Dh]
            qq = np.asarray(q2)[:, query_pos]  # [B, P, H, Dh]
            logits = np.einsum("bphd,bshd->bhps", qq, rk)
            read_entropy = _entropy(_softmax(logits * tau_read[:, None, None]))
        s = cell.update_state(s, keys2, ops.concatenate([prev_v, v_t], 1), projected)
        prev_k, prev_v = k_t, v_t
    temps = {
        "state_write": float(np.mean(tau_write)),
        "token_read": float(np.mean(tau_read)),
    }
    # The lowest sliding layer's self-attention (layer 0 unless the recurrent
    # layer is at the bottom, as in the ablation without a layer below it).
    sliding = [
        layer
        for layer in backbone.transformer_layers
        if hasattr(layer, "self_attention")
    ]
    if sliding:
        tau = sliding[0].self_attention.effective_temperature()
        temps["token_self_lowest_sliding"] = float(np.mean(np.asarray(tau)))
    return {
        "write_entropy": float(np.mean(write_entropy)),
        "write_entropy_uniform": math.log(2 * w),
        "read_entropy": read_entropy,
        "read_entropy_uniform": math.log(cell.num_states),
        "temperatures": temps,
    }


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def build(variant, args):
    overrides = {"dropout": 0.0, "num_layers": args.num_layers}
    overrides["block_size"] = args.window
    if args.num_heads:
        overrides["num_heads"] = args.num_heads
        overrides["head_dim"] = args.head_dim or 64 // args.num_heads
    overrides["temperature_init"] = args.temperature_init
    overrides["temperature_parameterization"] = args.temperature_parameterization
    overrides["temperature_lr_multiplier"] = args.temperature_lr_multiplier
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    if variant.startswith("rec"):
        overrides["num_states"] = args.num_states
        if args.recurrent_layer is not None:
            overrides["recurrent_layers"] = (args.recurrent_layer,)
    return common.build_lm(variant, args.size, **overrides)


def train_and_eval(variant, seed, args):
    import keras

    keras.utils.set_random_seed(seed)
    lm = build(variant, args)
    w = lm.backbone.block_size
    num_layers = lm.backbone.num_layers
    pair_blocks, query_block, blocks = layout(w, num_layers, args.pairs, args.gap)
    lr = args.lr
    if args.schedule == "cosine":
        warmup = max(1, args.steps // 20)
        lr = keras.optimizers.schedules.CosineDecay(
            0.0,
            args.steps - warmup,
            alpha=0.01,
            warmup_target=args.lr,
            warmup_steps=warmup,
        )
    if args.optimizer == "adafactor":
        from brt_keras.models.optimizers import PaperAdafactor

        optimizer = PaperAdafactor(learning_rate=lr)
    else:
        optimizer = keras.optimizers.Adam(lr)
    step = common.TrainStep(lm, optimizer=optimizer)
    forward = common.forward_fn(lm)
    rng = np.random.default_rng(1000 + seed)
    stages = parse_curriculum(args.curriculum, args.pairs, query_block, pair_blocks)
    stage = 0
    data = dict(
        w=w,
        num_keys=args.keys,
        num_values=args.values,
        num_filler=args.filler,
        blocks=blocks,
        query_marker=args.query_marker,
    )
    sos = np.ones((args.batch,), bool)

    def evaluate(pairs, query_block, batches, seed_):
        eval_rng = np.random.default_rng(seed_)
        pos = query_positions(w, pairs, query_block, args.query_marker)
        per_query = np.zeros(pairs)
        n = 0
        for _ in range(batches):
            x, y = make_batch(
                eval_rng, args.batch, pairs=pairs, query_block=query_block, **data
            )
            logits, _ = forward(x, lm.get_initial_state(args.batch))
            pred = np.argmax(np.asarray(logits), -1)
            per_query += np.sum(pred[:, pos] == y[:, pos], 0)
            n += args.batch
        return per_query / n, x, pos

    history = []
    stage_log = [(0, stages[0])]
    t0 = time.perf_counter()
    loss_sum = loss_n = 0
    for i in range(args.steps):
        pairs, block = stages[stage]
        x, y = make_batch(rng, args.batch, pairs=pairs, query_block=block, **data)
        loss, _ = step(x, y, lm.get_initial_state(args.batch), sos)
        loss_sum += float(np.asarray(loss))
        loss_n += 1
        if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
            by_query, xe, pos = evaluate(pairs, block, 2, 7 + i)
            entry = {
                "step": i + 1,
                "pairs": pairs,
                "query_block": block,
                "loss": loss_sum / loss_n,
                "accuracy": float(by_query.mean()),
                "accuracy_by_query": by_query.tolist(),
                "no_binding": float(
                    no_binding_accuracy(pairs, args.values, 4000).mean()
                ),
                "seconds": time.perf_counter() - t0,
            }
            if variant.startswith("rec"):
                entry.update(attention_diagnostics(lm, xe[:64], pair_blocks, pos))
            history.append(entry)
            loss_sum = loss_n = 0
            common.log(
                f"  step {i + 1} pairs {pairs}@{block} loss {entry['loss']:.3f} "
                f"acc {entry['accuracy']:.3f} (no-binding {entry['no_binding']:.3f})"
                + (
                    f" write H {entry['write_entropy']:.2f} read H "
                    f"{entry['read_entropy']:.2f} tau {entry['temperatures']}"
                    if "write_entropy" in entry
                    else ""
                )
            )
            if stage + 1 < len(stages) and entry["accuracy"] >= args.advance_at:
                stage += 1
                stage_log.append((i + 1, stages[stage]))
                common.log(f"  curriculum: stage {stages[stage]} from step {i + 1}")
            elif (
                args.stop_at
                and stage == len(stages) - 1
                and entry["accuracy"] >= args.stop_at
            ):
                common.log(
                    f"  stop: {entry['accuracy']:.3f} >= --stop-at at the final stage"
                )
                break
    train_s = time.perf_counter() - t0
    by_query, _, _ = evaluate(args.pairs, query_block, args.eval_batches, 99999)
    return {
        "variant": variant,
        "seed": seed,
        "accuracy": float(by_query.mean()),
        "accuracy_by_query": by_query.tolist(),
        "reached_final_stage": stage == len(stages) - 1,
        "curriculum": stage_log,
        "num_layers": num_layers,
        "recurrent_layers": list(lm.backbone.recurrent_indices),
        "history": history,
        "steps_run": i + 1,
        "train_s": train_s,
        "window": w,
        "blocks": blocks,
        "query_block": query_block,
        "receptive_field_tokens": num_layers * w,
        "query_distance_min_tokens": min_distance(w, args.pairs, query_block),
        "params": common.count_params(lm),
    }


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def plot_diagnostics(results, args, name):
    fig, axes = common.new_figure(ncols=4, width=4.0, height=3.6)
    for j, r in enumerate(results):
        h = r["history"]
        steps = [e["step"] for e in h]
        label = f"{r['variant']} s{r['seed']}" + (
            f" {r['label']}" if r.get("label") else ""
        )
        c = f"C{j % 10}"
        axes[0].plot(steps, [e["accuracy"] for e in h], color=c, label=label)
        axes[0].plot(steps, [e["no_binding"] for e in h], color=c, ls=":", lw=0.8)
        if "write_entropy" in h[0]:
            axes[1].plot(steps, [e["write_entropy"] for e in h], color=c)
            axes[1].plot(steps, [e["read_entropy"] for e in h], color=c, ls="--")
            axes[2].plot(steps, [e["temperatures"]["state_write"] for e in h], color=c)
            axes[2].plot(
                steps, [e["temperatures"]["token_read"] for e in h], color=c, ls="--"
            )
        last = h[-1]["accuracy_by_query"]
        axes[3].plot(range(1, len(last) + 1), last, "o-", color=c, label=label)
    bag = no_binding_accuracy(args.pairs, args.values)
    axes[3].plot(range(1, len(bag) + 1), bag, "k:", label="no-binding ceiling")
    axes[0].set_title("accuracy (dotted: no-binding ceiling)")
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=6)
    axes[1].set_title("entropy: write (solid), read (dashed)")
    axes[1].set_xlabel("step")
    axes[2].set_title("temperature: state write (solid), token read (dashed)")
    axes[2].set_xlabel("step")
    axes[2].set_yscale("log")
    axes[3].set_title(f"final per-query accuracy, {args.pairs} pairs")
    axes[3].set_xlabel("query")
    axes[3].legend(fontsize=6)
    return common.save_figure(fig, name, args.out_dir)


def summarise(results, variants):
    summary = {}
    for variant in variants:
        accs = [r["accuracy"] for r in results if r["variant"] == variant]
        if accs:
            summary[variant] = {
                "mean": float(np.mean(accs)),
                "min": float(np.min(accs)),
                "max": float(np.max(accs)),
                "seeds": accs,
                "train_s": [r["train_s"] for r in results if r["variant"] == variant],
            }
    return summary


def apply_recipe(args, defaults):
    """The recipe's settings, except where the command line set another."""
    for key, value in RECIPE.items():
        if getattr(args, key) == defaults[key]:
            setattr(args, key, value)


def parser():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny")
    p.add_argument("--presets", default="rec_fixed_skip,slide_12")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--optimizer", choices=("adam", "adafactor"), default="adam")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra model config override for every preset, e.g. intermediate_dim=256",
    )
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--gap", type=int, default=2, help="min filler blocks (>= 2)")
    p.add_argument("--keys", type=int, default=16)
    p.add_argument("--values", type=int, default=16)
    p.add_argument("--filler", type=int, default=32)
    p.add_argument("--query-marker", action="store_true")
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--window", type=int, default=8, help="W")
    p.add_argument("--num-states", type=int, default=8, help="S")
    p.add_argument("--num-heads", type=int, default=0, help="0: the size's")
    p.add_argument("--head-dim", type=int, default=0)
    p.add_argument(
        "--recurrent-layer", type=int, default=None, help="default: -3 mod L"
    )
    p.add_argument("--temperature-init", type=float, default=1.0)
    p.add_argument(
        "--temperature-parameterization", choices=("linear", "log"), default="linear"
    )
    p.add_argument("--temperature-lr-multiplier", type=float, default=1.0)
    p.add_argument(
        "--curriculum",
        default="",
        help="stages P or P@G (P pairs, queries G blocks after the pair block;"
        " G=0: within the window), e.g. 8@0,8; advance at --advance-at accuracy",
    )
    p.add_argument("--advance-at", type=float, default=0.95)
    p.add_argument(
        "--stop-at",
        type=float,
        default=0.0,
        help="end training once the final stage's periodic accuracy reaches this"
        " (0: run all --steps); the reported accuracy is the final evaluation's",
    )
    p.add_argument("--recipe", action="store_true", help="the documented recipe")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="recipe, then the recipe with each lever removed once (rec only)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs of an interrupted run's <name>_partial.json and run"
        " only the missing ones (give the same other flags)",
    )
    p.add_argument("--name", default="long_range_recall")
    p.add_argument(
        "--from-partial",
        default=None,
        metavar="JSON",
        help="report the runs saved in an interrupted run's <name>_partial.json"
        " (no training; give the same other flags)",
    )
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.recipe or args.ablation:
        apply_recipe(args, vars(p.parse_args([])))
    if args.quick:
        args.seeds, args.steps, args.eval_batches, args.eval_every = "0", 20, 2, 10
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.presets.split(",")
    runs = []  # (label, variant, settings)
    if args.ablation:
        variants = ["rec_fixed_skip"]
        runs.append(("recipe", "rec_fixed_skip", dict(vars(args))))
        for lever, keys in LEVERS.items():
            settings = dict(vars(args))
            settings.update({k: LEVER_DEFAULTS[k] for k in keys})
            runs.append((f"without {lever}", "rec_fixed_skip", settings))
        reference = dict(vars(args))
        reference.update(LEVER_DEFAULTS)
        runs.append(("reference defaults", "rec_fixed_skip", reference))
    else:
        runs = [("", v, dict(vars(args))) for v in variants]

    import argparse

    results = []
    if args.from_partial:
        with open(args.from_partial) as f:
            results = json.load(f)["results"]
        runs = [
            (label, v, s)
            for label, v, s in runs
            if any(r["label"] == label and r["variant"] == v for r in results)
        ]
        variants = [v for v in variants if any(r["variant"] == v for r in results)]
        common.log(f"[{args.name}] {len(results)} runs from {args.from_partial}")
    partial = common.results_path(args.name + "_partial", "json", args.out_dir)
    if args.resume and not args.from_partial and os.path.exists(partial):
        with open(partial) as f:
            results = json.load(f)["results"]
        common.log(f"[{args.name}] resuming after {len(results)} runs in {partial}")
    for label, variant, settings in [] if args.from_partial else runs:
        run_args = argparse.Namespace(**settings)
        for seed in seeds:
            if any(
                (r["label"], r["variant"], r["seed"]) == (label, variant, seed)
                for r in results
            ):
                continue  # done before an interruption (--resume)
            common.log(f"[{args.name}] {variant} {label} seed {seed} ...")
            r = train_and_eval(variant, seed, run_args)
            r["label"] = label
            r["settings"] = {
                k: settings[k] for k in list(LEVER_DEFAULTS) + ["lr", "pairs"]
            }
            by_query = " ".join(f"{a:.2f}" for a in r["accuracy_by_query"])
            common.log(
                f"  accuracy {r['accuracy']:.3f} (by query {by_query}; "
                f"{r['train_s']:.0f}s)"
            )
            results.append(r)
            # Partial results survive an interrupted run.
            common.write_results(
                args.name + "_partial", {"results": results}, args.out_dir
            )
    chance = 1.0 / args.values
    bag = no_binding_accuracy(args.pairs, args.values)
    rows = []
    if args.ablation:
        for label, _, _ in runs:
            rs = [r for r in results if r["label"] == label]
            accs = [r["accuracy"] for r in rs]
            rows.append(
                [
                    label,
                    len(accs),
                    float(np.mean(accs)),
                    float(np.min(accs)),
                    float(np.mean([r["train_s"] for r in rs])),
                    float(bag.mean()),
                ]
            )
        headers = ["run", "seeds", "mean acc", "min acc", "train s", "no-binding"]
    else:
        summary = summarise(results, variants)
        for variant, s in summary.items():
            rows.append(
                [
                    variant,
                    args.size,
                    len(s["seeds"]),
                    s["mean"],
                    s["min"],
                    s["max"],
                    float(np.max(s["train_s"])),
                    chance,
                    float(bag.mean()),
                ]
            )
        headers = [
            "preset",
            "size",
            "seeds",
            "mean acc",
            "min acc",
            "max acc",
            "max train s",
            "chance",
            "no-binding",
        ]
    notes = []
    summary = summarise(results, variants)
    if not args.ablation and "rec_fixed_skip" in summary:
        rec = summary["rec_fixed_skip"]
        notes.append(
            f"rec_fixed_skip worst seed {rec['min']:.3f} (target >= 0.95: "
            f"{'met' if rec['min'] >= 0.95 else 'NOT met'}); slowest seed "
            f"{max(rec['train_s']):.0f} s (target < 1800 s)"
        )
    if not args.ablation and "slide_12" in summary:
        s = summary["slide_12"]["max"]
        notes.append(
            f"slide_12 best seed {s:.3f}, chance {chance:.3f} "
            f"({'near chance' if s <= 2 * chance else 'ABOVE chance'})"
        )
    r0 = results[0]
    far = max(r["receptive_field_tokens"] for r in results)
    gap = min(r["query_distance_min_tokens"] for r in results)
    notes.append(
        f"task: {args.pairs} pairs in the first block(s), queries in block "
        f"{r0['query_block']} of {r0['blocks']}; W={r0['window']}, min key-query "
        f"distance {gap} tokens {'>' if gap > far else '<= (NOT beyond)'} "
        f"receptive field of the sliding stack ({far} tokens); {args.steps} "
        f"steps x batch {args.batch}, {args.optimizer} lr {args.lr} ({args.schedule})"
    )
    notes.append(
        "no-binding ceiling: "
        f"{bag.mean():.3f}, by query " + " ".join(f"{a:.2f}" for a in bag)
    )
    for r in results:
        by_query = " ".join(f"{a:.2f}" for a in r["accuracy_by_query"])
        notes.append(
            f"{r['variant']} {r['label']} seed {r['seed']}: accuracy "
            f"{r['accuracy']:.3f}, by query {by_query}, {r['train_s']:.0f} s"
        )
    png = plot_diagnostics(results, args, args.name)
    common.report(
        args.name,
        "Associative recall across blocks",
        headers,
        rows,
        {
            "config": vars(args),
            "summary": summary,
            "no_binding_accuracy_by_query": bag.tolist(),
            "results": results,
            "plot": png,
            "command": "python -m benchmarks.long_range_recall "
            + json.dumps(vars(args)),
        },
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
