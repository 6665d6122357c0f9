"""What the recurrent state is worth on real long documents.

Trains `rec_fixed_skip`, `slide_12` and `xl_512` (the same size, byte tokens,
equal tokens per step) on the offline code and books corpora through the real
trainer (`python -m trainers.train`), then evaluates each on the test split
through `python -m trainers.evaluate` twice: with the state carried through
each document (`--reset_state never`) and reset at every segment start
(`--reset_state every_segment`, the memory ablation), with bits/token by
position in the document and 95 % bootstrap intervals over documents.

    python -m benchmarks.memory_value                     # full: hours, resumable
    python -m benchmarks.memory_value --quick             # smoke run, ~minutes

Resumable and idempotent: every (corpus, preset) has its own run directory
under `--runs-dir`; re-running the same command continues each training run
from its newest checkpoint (the trainer's own resume), skips evaluations whose
JSON already exists, and rewrites the report from what is there. A run that is
not finished is reported as such, with its step and the measured tokens/s.

Reported for every model: bits/token carried, reset, and the difference
(reset - carried) with a paired bootstrap interval over documents; the
by-position curves (one per model, one panel per corpus) in
`memory_value.png`.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks import common

PRESETS = ("rec_fixed_skip", "slide_12", "xl_512")
# The paper, GitHub, 150M, bits/token (Table 1), and the order it gives.
PAPER_GITHUB = {
    "rec_fixed_skip": 0.976,
    "xl_2048": 1.01,
    "slide_13": 1.17,
    "slide_12": 1.19,
    "xl_512": 1.21,
}
PAPER_PG19 = {"rec_fixed_skip": 3.53, "slide_12": 3.6, "xl_512": 3.62}


def segment_and_batch(preset, size, tokens_per_step):
    """The preset's training segment and the batch giving `tokens_per_step`."""
    from brt_keras.models import presets

    segment = presets.preset_config(preset, size)["segment_length"]
    if tokens_per_step % segment:
        raise ValueError(
            f"--tokens-per-step {tokens_per_step} is not a multiple of "
            f"{preset}'s segment {segment} at size {size}."
        )
    return segment, tokens_per_step // segment


def run_command(cmd, log_path):
    """Runs `cmd` with the repository as cwd, appending output to
    `log_path`; returns the exit status."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}  # {time.strftime('%Y-%m-%dT%H:%M:%SZ')}\n")
        log.flush()
        return subprocess.call(
            cmd, cwd=common.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
        )


def history(run_dir):
    path = os.path.join(run_dir, "history.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by an interruption
    return rows


def tokens_per_second(rows):
    speeds = [r["tokens_per_second"] for r in rows[-200:] if r.get("tokens_per_second")]
    return float(np.median(speeds)) if speeds else None


def train(corpus, preset, args, data_dir, run_dir):
    segment, batch = segment_and_batch(preset, args.size, args.tokens_per_step)
    steps = math.ceil(args.train_tokens / args.tokens_per_step)
    cmd = [
        sys.executable,
        "-m",
        "trainers.train",
        f"--model_dir={run_dir}",
        f"--preset={preset}",
        f"--size={args.size}",
        f"--corpus={corpus}",
        f"--data_dir={data_dir}",
        f"--steps={steps}",
        f"--batch_size={batch}",
        f"--segment_length={segment}",
        "--tokenizer=bytes",
        f"--warmup_steps={min(args.warmup_steps, max(1, steps // 10))}",
        f"--checkpoint_every={args.checkpoint_every}",
        f"--chunk_steps={min(args.checkpoint_every, 50)}",
        f"--seed={args.seed}",
        "--verbose=0",
    ]
    if args.backend:
        cmd.append(f"--backend={args.backend}")
    rows = history(run_dir)
    if (
        rows
        and rows[-1]["step"] >= steps
        and os.path.exists(os.path.join(run_dir, "model.keras"))
    ):
        return 0, steps  # finished: no need to start the trainer to find out
    os.makedirs(run_dir, exist_ok=True)
    rc = run_command(cmd, os.path.join(run_dir, "memory_value_train.log"))
    return rc, steps


def eval_path(run_dir, reset):
    return os.path.join(run_dir, f"memory_value_eval_{reset}.json")


def evaluate(corpus, preset, args, data_dir, run_dir, reset):
    out = eval_path(run_dir, reset)
    if os.path.exists(out):
        return 0
    slots = args.eval_batch
    cmd = [
        sys.executable,
        "-m",
        "trainers.evaluate",
        f"--model_dir={run_dir}",
        f"--corpus={corpus}",
        f"--data_dir={data_dir}",
        "--split=test",
        f"--batch_size={slots}",
        # Scored tokens, not segments: a split with fewer documents than slots
        # (books: 5) leaves slots idle, which a segment cap would count.
        f"--max_tokens={args.eval_tokens}",
        f"--reset_state={reset}",
        "--by_position",
        f"--bootstrap={args.bootstrap}",
        f"--label={preset}",
        f"--output={out}",
    ]
    if args.backend:
        cmd.append(f"--backend={args.backend}")
    # trainers.evaluate writes its JSON only once it has finished.
    return run_command(cmd, os.path.join(run_dir, "memory_value_eval.log"))


def paired_difference(carried, reset, resamples):
    """Reset minus carried bits/token with a paired 95 % bootstrap interval
    over the documents both evaluations scored (`trainers.scoring`)."""
    from trainers import scoring

    return scoring.paired_difference(carried, reset, samples=resamples)


def curve_drop(curve, start, min_tokens):
    """Bits/token of the bucket starting at `start` minus that of the last
    bucket holding at least `min_tokens` tokens (how much the curve still falls
    past `start`), with the two buckets' starts; None if there is no such pair."""
    buckets = [b for b in curve or () if b["bits_per_token"] is not None]
    first = [b for b in buckets if b["start"] == start]
    last = [b for b in buckets if b["tokens"] >= min_tokens and b["start"] > start]
    if not first or not last:
        return None
    a, b = first[0], last[-1]
    return {
        "from": a["start"],
        "to": b["start"],
        "from_bits": a["bits_per_token"],
        "to_bits": b["bits_per_token"],
        "drop": a["bits_per_token"] - b["bits_per_token"],
    }


def bucket_gaps(curve_a, curve_b, min_tokens):
    """Bits/token of `curve_b` minus `curve_a` in every position bucket both
    filled with at least `min_tokens` tokens."""
    b_at = {b["start"]: b for b in curve_b or ()}
    gaps = []
    for a in curve_a or ():
        b = b_at.get(a["start"])
        if b and min(a["tokens"], b["tokens"]) >= min_tokens:
            if a["bits_per_token"] is not None and b["bits_per_token"] is not None:
                gap = b["bits_per_token"] - a["bits_per_token"]
                gaps.append({"start": a["start"], "gap": gap})
    return gaps


def same_documents(carried, receptive_field, min_documents):
    """`trainers.scoring.same_documents_by_position` over the carried evaluations
    (``{preset: eval}``), reaching as far past the receptive field as at least
    `min_documents` documents go; None if none reach the next bucket."""
    from trainers import scoring

    results = list(carried.values())
    best = None
    first = int(scoring.position_bucket([receptive_field])[0]) + 1
    for k in range(first, 64):
        start, _ = scoring.bucket_bounds(k)
        found = scoring.same_documents_by_position(results, start, min_documents)
        if found is None:
            break
        best = found
    if best:
        best["curves"] = dict(zip(carried, best["curves"]))
    return best


def same_document_notes(carried, corpus, args):
    """The by-position targets on one fixed set of documents (the plain curves'
    later buckets hold only the longest documents): each model's fall from the
    receptive field's bucket to the last one, rec_fixed_skip's fall beyond each
    other model's, and the per-bucket gaps, with paired intervals over documents."""
    from trainers import scoring

    try:
        same = same_documents(carried, args.receptive_field, args.min_documents)
    except ValueError as e:
        return None, [f"{corpus}: same-documents curves not computed: {e}"]
    if not same:
        few = (
            f"fewer than {args.min_documents} documents reach"
            if args.min_documents > 1
            else "no document reaches"
        )
        return None, [
            f"{corpus}: {few} the bucket after the receptive field's "
            f"({args.receptive_field}); no same-documents curves (--min-documents)"
        ]
    docs, notes = same["documents"], []
    kr = int(scoring.position_bucket([args.receptive_field])[0])
    kl = int(scoring.position_bucket([same["reach"]])[0])
    found = {"documents": len(docs), "reach": same["reach"], "curves": same["curves"]}
    found["drop"] = {}
    head = f"{corpus}, the same {len(docs)} documents (each >= {same['reach']} tokens)"
    for p, result in carried.items():
        d = scoring.paired_bucket_contrast(
            [result, result], [1, -1], [kr, kl], docs, args.bootstrap
        )
        found["drop"][p] = dict(d, met=d["interval"][0] > 0)
        notes.append(
            f"{head}: {p} falls {d['difference']:+.4f} [{d['interval'][0]:+.4f}, "
            f"{d['interval'][1]:+.4f}] bits/token from bucket "
            f"{scoring.bucket_bounds(kr)[0]} to bucket {same['reach']}"
        )
    rec = carried.get("rec_fixed_skip")
    if rec is None:
        return found, notes
    for other, result in carried.items():
        if other == "rec_fixed_skip":
            continue
        d = scoring.paired_bucket_contrast(
            [rec, rec, result, result],
            [1, -1, -1, 1],
            [kr, kl, kr, kl],
            docs,
            args.bootstrap,
        )
        met = found["drop"]["rec_fixed_skip"]["met"] and d["interval"][0] > 0
        found[f"rec_fixed_skip falls beyond {other}"] = dict(d, met=met)
        gaps = []
        for k in range(kl + 1):
            g = scoring.paired_bucket_contrast(
                [rec, result], [-1, 1], k, docs, args.bootstrap
            )
            gaps.append(dict(g, start=scoring.bucket_bounds(k)[0]))
        found[f"{other} - rec_fixed_skip by position"] = gaps
        notes.append(
            f"{head}: rec_fixed_skip falls {d['difference']:+.4f} "
            f"[{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}] more than {other} past "
            "the receptive field: "
            + ("keeps falling where the other flattens (met)" if met else "NOT met")
        )
        notes.append(
            f"{head}: {other} - rec_fixed_skip by position: "
            + ", ".join(
                f"{g['start']}: {g['difference']:+.3f} [{g['interval'][0]:+.3f}, "
                f"{g['interval'][1]:+.3f}]"
                for g in gaps
            )
        )
    return found, notes


def target_notes(results, corpus, args):
    """The issue's targets on `corpus`, read off the evaluations: returns
    (payload, notes)."""
    from trainers import scoring

    found, notes = {}, []
    get = {p: results.get((corpus, p), {}) for p in args.presets.split(",")}
    rec = get.get("rec_fixed_skip", {})
    carried = {p: e["never"] for p, e in get.items() if e.get("never")}
    if "rec_fixed_skip" in carried:
        for other in carried:
            if other == "rec_fixed_skip":
                continue
            d = paired_difference(
                carried["rec_fixed_skip"], carried[other], args.bootstrap
            )
            beyond = d["interval"][0] > 0
            found[f"{other} - rec_fixed_skip"] = dict(d, met=beyond)
            notes.append(
                f"{corpus}: {other} - rec_fixed_skip (carried) = {d['difference']:+.4f} "
                f"bits/token [{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}] over "
                f"{d['documents']} documents (paired): rec_fixed_skip "
                + (
                    "better beyond the interval"
                    if beyond
                    else "NOT better beyond the interval"
                )
            )
    if rec.get("difference"):
        d = rec["difference"]
        beyond = d["interval"][0] > 0
        found["rec_fixed_skip reset - carried"] = dict(d, met=beyond)
        notes.append(
            f"{corpus}: rec_fixed_skip reset - carried = {d['difference']:+.4f} "
            f"[{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}]: "
            + (
                "positive beyond the interval"
                if beyond
                else "NOT positive beyond the interval"
            )
        )
    # Resetting also empties the sliding caches, which every model loses; what
    # rec_fixed_skip loses beyond another model is what its state carried.
    if rec.get("never") and rec.get("every_segment"):
        for other, e in get.items():
            if other == "rec_fixed_skip" or not (
                e.get("never") and e.get("every_segment")
            ):
                continue
            d = scoring.paired_contrast(
                [rec["every_segment"], rec["never"], e["every_segment"], e["never"]],
                [1, -1, -1, 1],
                samples=args.bootstrap,
            )
            found[f"rec_fixed_skip reset cost - {other}'s"] = d
            notes.append(
                f"{corpus}: rec_fixed_skip's reset cost minus {other}'s = "
                f"{d['difference']:+.4f} [{d['interval'][0]:+.4f}, "
                f"{d['interval'][1]:+.4f}] (paired over {d['documents']} documents)"
            )
    min_tokens = max(1, args.eval_tokens // 200)
    drops = {}
    for p, result in carried.items():
        drop = curve_drop(result.get("by_position"), args.receptive_field, min_tokens)
        if drop:
            drops[p] = drop
            trend = "falls" if drop["drop"] > 0 else "does NOT fall"
            notes.append(
                f"{corpus}: {p} by position {trend} past the sliding stack's "
                f"receptive field ({args.receptive_field}): bucket {drop['from']} "
                f"{drop['from_bits']:.3f}, last bucket with >= {min_tokens} tokens "
                f"({drop['to']}) {drop['to_bits']:.3f} bits/token"
            )
    found["drop_past_receptive_field"] = drops
    # Later buckets hold only the longer documents, so one curve mixes
    # documents; the gap between two models at the same position does not.
    if "rec_fixed_skip" in carried:
        for other in carried:
            if other == "rec_fixed_skip":
                continue
            gaps = bucket_gaps(
                carried["rec_fixed_skip"]["by_position"],
                carried[other]["by_position"],
                min_tokens,
            )
            found[f"{other} - rec_fixed_skip by position"] = gaps
            notes.append(
                f"{corpus}: {other} - rec_fixed_skip by position: "
                + ", ".join(f"{g['start']}: {g['gap']:+.3f}" for g in gaps)
            )
    if carried:
        found["same_documents"], same_notes = same_document_notes(carried, corpus, args)
        notes.extend(same_notes)
    if carried:
        order = sorted(carried, key=lambda p: carried[p]["bits_per_token"])
        paper = PAPER_GITHUB if corpus == "code" else PAPER_PG19
        paper_order = sorted((p for p in order if p in paper), key=paper.get)
        found["order"] = order
        notes.append(
            f"{corpus}: order by carried bits/token {' < '.join(order)}; the paper's "
            f"({'GitHub' if corpus == 'code' else 'PG19'}) {' < '.join(paper_order)}"
            + (" (same)" if order == paper_order else " (differs)")
        )
    return found, notes


def interval(result):
    return (result.get("bootstrap") or {}).get("bits_per_token")


def build_quick_corpus(data_dir):
    """A tiny code corpus (this repository's Python files) for the smoke run;
    returns the corpus name."""
    name = "memory_value_quick"
    if os.path.isdir(os.path.join(data_dir, name)):
        return name
    cmd = [
        sys.executable,
        "-m",
        "data.build",
        "--corpus=text",
        f"--raw_dir={os.path.join(common.REPO_ROOT, 'brt_keras')}",
        f"--name={name}",
        f"--data_dir={data_dir}",
        "--extensions=.py",
    ]
    os.makedirs(data_dir, exist_ok=True)
    rc = run_command(cmd, os.path.join(data_dir, "build.log"))
    if rc:
        raise SystemExit(f"building the quick corpus failed; see {data_dir}/build.log")
    return name


def plot(results, corpora, args, targets=None):
    """Per corpus: the by-position curves over all documents (carried and reset),
    and, when computed, the carried curves over the same documents."""
    targets = targets or {}
    panels = []
    for corpus in corpora:
        panels.append((corpus, None))
        same = (targets.get(corpus) or {}).get("same_documents")
        if same:
            panels.append((corpus, same))
    fig, axes = common.new_figure(ncols=len(panels), width=5.5)
    axes = np.atleast_1d(axes)
    presets = args.presets.split(",")
    for ax, (corpus, same) in zip(axes, panels):
        for j, preset in enumerate(presets):
            r = results.get((corpus, preset), {})
            if same:
                curves = [("never", "-", same["curves"].get(preset))]
            else:
                curves = [
                    (reset, ls, (r.get(reset) or {}).get("by_position"))
                    for reset, ls in (("never", "-"), ("every_segment", ":"))
                ]
            for reset, ls, curve in curves:
                pts = [b for b in curve or () if b["bits_per_token"] is not None]
                if not pts:
                    continue
                ax.plot(
                    [b["start"] + 1 for b in pts],
                    [b["bits_per_token"] for b in pts],
                    ls,
                    marker="o",
                    ms=3,
                    color=f"C{j}",
                    label=f"{preset}" + ("" if reset == "never" else " (reset)"),
                )
        ax.axvline(
            args.receptive_field, color="grey", lw=0.8, label="slide_12 receptive field"
        )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position in document (bucket start + 1)")
        ax.set_ylabel("bits/token")
        ax.set_title(
            f"{corpus}: the same {same['documents']} documents (>= {same['reach']} tokens)"
            if same
            else f"{corpus}: all documents"
        )
        ax.legend(fontsize=7)
    return common.save_figure(fig, "memory_value", args.out_dir)


def parser():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="mini")
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--corpora", default="code,books")
    p.add_argument("--code-data-dir", default=os.environ.get("BRT_CODE_DATA_DIR"))
    p.add_argument("--books-data-dir", default=os.environ.get("BRT_BOOKS_DATA_DIR"))
    p.add_argument(
        "--runs-dir",
        default=os.path.join(common.REPO_ROOT, "runs", "memory_value"),
    )
    p.add_argument("--train-tokens", type=int, default=10_000_000)
    p.add_argument("--tokens-per-step", type=int, default=2048)
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--eval-tokens", type=int, default=1_000_000)
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument(
        "--min-documents",
        type=int,
        default=8,
        help="documents the same-documents by-position curves keep at least",
    )
    p.add_argument("--backend", default=None, help="tensorflow (default) or jax")
    p.add_argument(
        "--train-only", action="store_true", help="train, do not evaluate yet"
    )
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.quick:
        args.size = "tiny"
        args.train_tokens = 20 * 128
        args.tokens_per_step = 128
        args.eval_tokens = 2 * 2 * 32
        args.eval_batch = 2
        args.bootstrap = 50
        args.min_documents = 1
        args.checkpoint_every = 10
        args.warmup_steps = 2
        args.runs_dir = os.path.join(args.out_dir or "/tmp", "memory_value_quick")
        quick_data = os.path.join(args.runs_dir, "tfds")
        shutil.rmtree(args.runs_dir, ignore_errors=True)
        corpus = build_quick_corpus(quick_data)
        corpora = {corpus: quick_data}
    else:
        corpora = {}
        for corpus in args.corpora.split(","):
            # Like the trainers: TFDS's default data_dir unless given.
            data_dir = getattr(args, f"{corpus}_data_dir", None) or os.environ.get(
                "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")
            )
            corpora[corpus] = data_dir
    from brt_keras.models import presets as preset_lib

    config = preset_lib.preset_config("slide_12", args.size)
    args.receptive_field = config["num_layers"] * config["block_size"]
    presets = args.presets.split(",")
    results = {}
    rows = []
    notes = []
    pending = []
    for corpus, data_dir in corpora.items():
        for preset in presets:
            run_dir = os.path.join(args.runs_dir, f"{corpus}_{preset}")
            common.log(f"[memory_value] {corpus} {preset}: train ({run_dir})")
            rc, steps = train(corpus, preset, args, data_dir, run_dir)
            rows_h = history(run_dir)
            done_step = rows_h[-1]["step"] if rows_h else 0
            speed = tokens_per_second(rows_h)
            entry = {"run_dir": run_dir, "steps": steps, "step": done_step}
            entry["tokens_per_second"] = speed
            results[(corpus, preset)] = entry
            if rc or done_step < steps:
                pending.append((corpus, preset, done_step, steps, speed, rc))
                continue
            if args.train_only:
                continue
            for reset in ("never", "every_segment"):
                common.log(f"[memory_value] {corpus} {preset}: evaluate {reset}")
                if evaluate(corpus, preset, args, data_dir, run_dir, reset):
                    notes.append(
                        f"{corpus} {preset}: evaluation ({reset}) failed; see "
                        f"{run_dir}/memory_value_eval.log"
                    )
                path = eval_path(run_dir, reset)
                if os.path.exists(path):
                    with open(path) as f:
                        entry[reset] = json.load(f)
            if entry.get("never") and entry.get("every_segment"):
                entry["difference"] = paired_difference(
                    entry["never"], entry["every_segment"], args.bootstrap
                )
    for (corpus, preset), entry in results.items():
        carried, reset = entry.get("never"), entry.get("every_segment")
        diff = entry.get("difference") or {}

        def fmt(result):
            if not result:
                return "-"
            value = result["bits_per_token"]
            ci = interval(result)
            return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")

        rows.append(
            [
                corpus,
                preset,
                f"{entry['step']}/{entry['steps']}",
                fmt(carried),
                fmt(reset),
                (
                    f"{diff['difference']:+.4f} [{diff['interval'][0]:+.4f}, "
                    f"{diff['interval'][1]:+.4f}]"
                    if diff
                    else "-"
                ),
                (carried or {}).get("tokens", "-"),
                PAPER_GITHUB.get(preset)
                if corpus == "code"
                else PAPER_PG19.get(preset),
            ]
        )
    total_left = 0.0
    for corpus, preset, step, steps, speed, rc in pending:
        left = (steps - step) * args.tokens_per_step
        eta = left / speed if speed else None
        total_left += eta or 0.0
        notes.append(
            f"{corpus} {preset}: training at step {step}/{steps}"
            + (f" (trainer exit {rc})" if rc else "")
            + (
                f", {speed:.0f} tokens/s: ~{eta / 3600:.1f} h to go on this machine"
                if speed
                else ""
            )
            + "; re-run the same command to continue"
        )
    if pending:
        notes.append(f"training left in all: ~{total_left / 3600:.1f} h (sequential)")
    notes.append(
        f"{args.size}, byte tokens, {args.tokens_per_step} tokens/step for every "
        f"model, {args.train_tokens:,} training tokens per model; evaluation on "
        f"up to {args.eval_tokens:,} test tokens per model, {args.bootstrap} "
        "bootstrap resamples over documents; slide_12 receptive field "
        f"{args.receptive_field} tokens. Paper column: 150M models, T5 tokens, "
        "GitHub (code) / PG19 (books) bits/token; compare the order only."
    )
    targets = {}
    for corpus in corpora:
        targets[corpus], corpus_notes = target_notes(results, corpus, args)
        notes.extend(corpus_notes)
    png = plot(results, list(corpora), args, targets)
    common.report(
        "memory_value",
        "What the recurrent state is worth (bits/token, carried vs reset)",
        [
            "corpus",
            "preset",
            "step",
            "bits/token carried [95% CI]",
            "reset every segment",
            "reset - carried [95% CI]",
            "eval tokens",
            "paper",
        ],
        rows,
        {
            "config": vars(args),
            "results": {f"{c}/{p}": e for (c, p), e in results.items()},
            "targets": targets,
            "plot": png,
        },
        args.out_dir,
        notes,
    )


if __name__ == "__main__":
    main()
