"""Scoring whole documents with carried state: per-token losses, by position, per document.

Used by ``trainers.evaluate`` and importable without its flags (benchmarks, tests)::

    scores = score_documents(lm, texts, batch_size=4, reset_state="never", by_position=True)
    scores.bits_per_token, scores.by_position(), scores.per_document()
    bootstrap_interval(scores.doc_nll, scores.doc_tokens, samples=1000)
    plot_by_position([("rec", result["by_position"]), ...], "by_position.png")

Documents reach the model as in training (``data.long_document_dataset``, ``repeat=False``):
each batch slot reads one document segment after segment. ``reset_state="every_segment"`` is the
memory ablation: every segment is treated as a document start, so every layer's K/V cache and the
recurrent state are reset to their initial values at each segment start.

Positions: the loss of input token ``i`` predicts token ``i + 1``; it is reported at the position
of the predicted token (1, 2, ...). As in training, a segment's last input has no target inside
the segment, so the first token of every segment after the first is not scored (the reference's
loss); with byte tokens that is one token in ``segment_length``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

RESET_MODES = ("never", "every_segment")
FIRST_BUCKET = 256  # positions 0-255 form the first bucket; then 256-511, 512-1023, ...


def segment_losses(model, x):
    """Per-token NLL (nats, 0 where not scored) and scoring weights ``[B, L]`` of one segment,
    carrying the stream model's eval cache."""
    ids = x["token_ids"]
    logits = model(x, training=False)
    targets = ops.pad(ids[:, 1:], ((0, 0), (0, 1)))
    weights = ops.cast(ops.logical_and(ids > 0, targets > 0), "float32")
    logp = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(logp, ops.expand_dims(targets, -1), axis=-1)[..., 0]
    return -picked * weights, weights


def make_step(model, fn=segment_losses):
    """``(step, sync)``: a compiled ``step(x)`` that carries the model's eval cache, and
    ``sync()`` that writes the carried cache back to the model's variables (JAX)."""
    if keras.backend.backend() == "jax":
        import jax

        def pure(trainable, non_trainable, x):
            with keras.StatelessScope(
                state_mapping=list(zip(model.trainable_variables, trainable))
                + list(zip(model.non_trainable_variables, non_trainable))
            ) as scope:
                out = fn(model, x)
            new_nt = [scope.get_current_value(v) for v in model.non_trainable_variables]
            new_nt = [o if n is None else n for n, o in zip(new_nt, non_trainable)]
            return out, new_nt

        jitted = jax.jit(pure)
        holder = {"nt": [v.value for v in model.non_trainable_variables]}
        trainable = [v.value for v in model.trainable_variables]

        def step(x):
            out, holder["nt"] = jitted(trainable, holder["nt"], x)
            return out

        def sync():
            for v, value in zip(model.non_trainable_variables, holder["nt"]):
                v.assign(value)

        return step, sync
    import tensorflow as tf

    return tf.function(lambda x: fn(model, x)), lambda: None


def position_bucket(positions):
    """Bucket of each position: 0 for 0-255, k for [256 * 2**(k-1), 256 * 2**k)."""
    p = np.asarray(positions, np.int64)
    k = (
        np.floor(np.log2(np.maximum(p, 1))).astype(np.int64)
        - int(math.log2(FIRST_BUCKET))
        + 1
    )
    return np.where(p < FIRST_BUCKET, 0, k)


def bucket_bounds(k: int) -> tuple[int, int]:
    """First and last position of bucket ``k``."""
    if k == 0:
        return 0, FIRST_BUCKET - 1
    return FIRST_BUCKET << (k - 1), (FIRST_BUCKET << k) - 1


class Scores:
    """Accumulates one evaluation: totals, per-document totals, per-bucket sums."""

    def __init__(self, num_documents, keep_tokens=False):
        self.doc_nll = np.zeros(num_documents)  # nats
        self.doc_tokens = np.zeros(num_documents, np.int64)
        self.doc_bytes = np.zeros(num_documents, np.int64)
        self.doc_seen = np.zeros(num_documents, bool)
        self.bucket_nll = np.zeros(64)
        self.bucket_tokens = np.zeros(64, np.int64)
        # doc index -> [nll per bucket, tokens per bucket]: curves over a fixed set of
        # documents (`same_documents_by_position`), free of the long-document bias.
        self.doc_buckets = {}
        self.max_position = 0
        self.segments = 0
        self.complete = True
        # doc index -> list of (positions, nll) arrays, when keep_tokens (tests, analysis).
        self.tokens = {} if keep_tokens else None

    @property
    def total_nll(self):
        return float(self.doc_nll.sum())

    @property
    def total_tokens(self):
        return int(self.doc_tokens.sum())

    @property
    def total_bytes(self):
        return int(self.doc_bytes.sum())

    @property
    def bits_per_token(self):
        return self.total_nll / math.log(2) / max(self.total_tokens, 1)

    def add(self, docs, positions, nll, weights, num_bytes):
        """One segment: ``docs`` [B] document index per slot (-1: padding), ``positions``
        [B] position of each slot's first input token, ``nll``/``weights`` [B, L]."""
        self.segments += 1
        for b, doc in enumerate(docs):
            if doc < 0:
                continue
            scored = weights[b] > 0
            target_pos = positions[b] + 1 + np.nonzero(scored)[0]
            values = nll[b][scored].astype(np.float64)
            self.doc_seen[doc] = True
            self.doc_nll[doc] += values.sum()
            self.doc_tokens[doc] += int(scored.sum())
            self.doc_bytes[doc] += int(num_bytes[b])
            if target_pos.size:
                self.max_position = max(self.max_position, int(target_pos[-1]))
                np.add.at(self.bucket_nll, position_bucket(target_pos), values)
                np.add.at(self.bucket_tokens, position_bucket(target_pos), 1)
                per_doc = self.doc_buckets.setdefault(
                    doc, (np.zeros(64), np.zeros(64, np.int64))
                )
                np.add.at(per_doc[0], position_bucket(target_pos), values)
                np.add.at(per_doc[1], position_bucket(target_pos), 1)
            if self.tokens is not None:
                self.tokens.setdefault(doc, []).append((target_pos, values))

    def token_losses(self, doc):
        """(positions, nll nats) of every scored token of document ``doc`` (keep_tokens)."""
        parts = self.tokens.get(doc, [])
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate([p for p, _ in parts]), np.concatenate(
            [v for _, v in parts]
        )

    def by_position(self):
        """Bits/token per log2 position bucket, up to the longest document's end."""
        out = []
        for k in range(int(position_bucket([self.max_position])[0]) + 1):
            start, end = bucket_bounds(k)
            n = int(self.bucket_tokens[k])
            out.append(
                {
                    "start": start,
                    "end": min(end, self.max_position),
                    "tokens": n,
                    "bits_per_token": self.bucket_nll[k] / math.log(2) / n
                    if n
                    else None,
                }
            )
        return out

    def per_document(self):
        """Totals of every document scored, by index in the split (pairs runs), and
        each document's bits and tokens per position bucket (up to its last one)."""
        idx = np.nonzero(self.doc_seen)[0]
        bucket_bits, bucket_tokens = [], []
        for i in idx.tolist():
            nll, tokens = self.doc_buckets.get(i, (np.zeros(1), np.zeros(1, np.int64)))
            last = int(np.nonzero(tokens)[0][-1]) + 1 if tokens.any() else 0
            bucket_bits.append(
                [round(v, 4) for v in (nll[:last] / math.log(2)).tolist()]
            )
            bucket_tokens.append(tokens[:last].tolist())
        return {
            "index": idx.tolist(),
            "tokens": self.doc_tokens[idx].tolist(),
            "bytes": self.doc_bytes[idx].tolist(),
            "nll_bits": [
                round(v, 4) for v in (self.doc_nll[idx] / math.log(2)).tolist()
            ],
            "bucket_nll_bits": bucket_bits,
            "bucket_tokens": bucket_tokens,
        }


def bootstrap_interval(numerator, denominator, samples=1000, level=0.95, seed=0):
    """Percentile bootstrap over documents of ``sum(numerator) / sum(denominator)``
    (e.g. per-document bits and tokens); ``[low, high]``, or None without documents."""
    num = np.asarray(numerator, np.float64)
    den = np.asarray(denominator, np.float64)
    if num.size == 0 or samples <= 0:
        return None
    counts = _resample_counts(num.size, samples, seed)
    return _percentiles((counts @ num) / (counts @ den), level)


def _resample_counts(d, samples, seed):
    """``[samples, d]``: how often each document is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(d, np.full(d, 1.0 / d), size=samples)


def _percentiles(values, level):
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def paired_difference(result_a, result_b, key="bits_per_token", samples=1000, seed=0):
    """Difference ``b - a`` of two evaluations (their JSON dicts) over the documents both
    scored, with a paired 95 % bootstrap interval: ``{"difference", "interval", "documents"}``."""
    return paired_contrast([result_a, result_b], [-1, 1], key, samples, seed)


def paired_contrast(results, weights, key="bits_per_token", samples=1000, seed=0):
    """``sum_i weights[i] * results[i][key]`` over the documents every evaluation scored,
    with a paired 95 % bootstrap interval (the same documents drawn for all), e.g.
    weights ``[1, -1, -1, 1]`` on (A reset, A carried, B reset, B carried): how much more
    A loses than B when its state is reset. ``{"difference", "interval", "documents"}``."""
    per_doc = [r["per_document"] for r in results]
    common = sorted(set.intersection(*(set(d["index"]) for d in per_doc)))
    if not common:
        raise ValueError("the evaluations share no document; evaluate the same split")
    unit = "tokens" if key == "bits_per_token" else "bytes"

    def column(d, name):
        pos = {i: j for j, i in enumerate(d["index"])}
        return np.array([d[name][pos[i]] for i in common], np.float64)

    num = np.stack([column(d, "nll_bits") for d in per_doc])
    den = np.stack([column(d, unit) for d in per_doc])
    w = np.asarray(weights, np.float64)
    value = float(w @ (num.sum(1) / den.sum(1)))
    counts = _resample_counts(num.shape[1], samples, seed)
    ratios = (counts @ num.T) / (counts @ den.T)  # [samples, evaluations]
    interval = _percentiles(ratios @ w, 0.95)
    return {"difference": value, "interval": interval, "documents": len(common)}


def _bucket_column(per_document, k, docs):
    """Per-document bits and tokens of bucket ``k`` for the documents ``docs``."""
    pos = {i: j for j, i in enumerate(per_document["index"])}
    bits, tokens = [], []
    for i in docs:
        row_bits = per_document["bucket_nll_bits"][pos[i]]
        row_tokens = per_document["bucket_tokens"][pos[i]]
        bits.append(row_bits[k] if k < len(row_bits) else 0.0)
        tokens.append(row_tokens[k] if k < len(row_tokens) else 0)
    return bits, tokens


def same_documents_by_position(results, reach, min_documents=1):
    """By-position curves of several evaluations over one fixed set of documents.

    A plain ``by_position`` curve mixes documents: its later buckets hold only the
    longest ones, which may simply be harder, so a curve can rise although every
    model gains from its context. Here every bucket averages the same documents:
    those every evaluation scored up to position ``reach`` (the bucket holding it
    has tokens; buckets past it are left out).

    Args:
        results: evaluation JSON dicts written with ``--by_position`` (per-document
            buckets are in ``per_document``).
        reach: a position; the documents kept reach its bucket.
        min_documents: fewer such documents than this gives None.

    Returns:
        ``{"documents": [...], "reach": reach, "curves": [by_position list per
        result]}`` or None.
    """
    k_max = int(position_bucket([reach])[0])
    per_doc = [r["per_document"] for r in results]
    if any("bucket_tokens" not in d for d in per_doc):
        raise ValueError(
            "an evaluation has no per-document position buckets; re-run trainers.evaluate "
            "with --by_position (evaluations written before 2026-12-03 lack them)"
        )
    keep = None
    for d in per_doc:
        reached = {
            i
            for i, t in zip(d["index"], d["bucket_tokens"])
            if len(t) > k_max and t[k_max]
        }
        keep = reached if keep is None else keep & reached
    docs = sorted(keep)
    if len(docs) < max(1, min_documents):
        return None
    curves = []
    for d in per_doc:
        curve = []
        for k in range(k_max + 1):
            bits, tokens = _bucket_column(d, k, docs)
            start, end = bucket_bounds(k)
            n = int(sum(tokens))
            curve.append(
                {
                    "start": start,
                    "end": end,
                    "tokens": n,
                    "bits_per_token": sum(bits) / n if n else None,
                }
            )
        curves.append(curve)
    return {"documents": docs, "reach": reach, "curves": curves}


def paired_bucket_contrast(results, weights, buckets, documents, samples=1000, seed=0):
    """`paired_contrast` over position buckets of ``documents``: term ``i`` is bucket
    ``buckets[i]`` (or one bucket for all) of ``results[i]``. E.g. weights ``[-1, 1]``
    with one bucket: the gap between two models at that position; with buckets
    ``[k1, k2]`` of the same result twice: how much one model's loss falls from one
    position to another, over the same documents. Bootstrap over documents."""
    if isinstance(buckets, int):
        buckets = [buckets] * len(results)
    views = []
    for r, k in zip(results, buckets):
        bits, tokens = _bucket_column(r["per_document"], k, documents)
        views.append(
            {
                "per_document": {
                    "index": list(documents),
                    "nll_bits": bits,
                    "tokens": tokens,
                    "bytes": tokens,
                }
            }
        )
    return paired_contrast(views, weights, samples=samples, seed=seed)


def plot_by_position(curves, path, title=None, receptive_field=None):
    """One curve of bits/token against position per ``(label, by_position list)``; an
    optional vertical line at ``receptive_field`` tokens (e.g. layers x window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ticks = {}
    for label, buckets in curves:
        pts = []
        for b in buckets:
            k = int(position_bucket([b["start"]])[0])
            ticks.setdefault(k, f"{b['start']}-")
            if b["bits_per_token"] is not None:
                pts.append((k, b["bits_per_token"]))
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", lw=1.5, label=label)
    if receptive_field:
        # Fractional bucket index: bucket k starts at 256 * 2**(k-1).
        r = receptive_field
        x = r / FIRST_BUCKET if r < FIRST_BUCKET else math.log2(r / FIRST_BUCKET) + 1
        ax.axvline(x, color="grey", ls="--", lw=1, label=f"receptive field ({r})")
    ax.set_xticks(sorted(ticks), [ticks[k] for k in sorted(ticks)])
    ax.set_xlabel("position in the document (tokens; log2 buckets)")
    ax.set_ylabel("bits per token")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def score_documents(
    lm,
    texts,
    *,
    batch_size=4,
    tokenizer="bytes",
    reset_state="never",
    max_segments=0,
    max_tokens=0,
    keep_tokens=False,
    progress=None,
):
    """Streams ``texts`` (the split's documents, in split order) through ``lm``.

    Args:
        lm: a `BlockRecurrentCausalLM`.
        texts: list of str/bytes documents; their indices name them in the result.
        batch_size: documents streamed in parallel.
        tokenizer: as for `data.long_document_dataset`.
        reset_state: "never" (carry the state through each document) or "every_segment"
            (reset caches and recurrent state at every segment start: the memory ablation).
        max_segments: stop after this many batches (0: all).
        max_tokens: stop once this many tokens are scored (0: all); unlike
            `max_segments`, idle slots (fewer documents left than slots) do not count.
        keep_tokens: keep every scored token's position and loss (`Scores.token_losses`).
        progress: optional callable(scores) after each batch.

    Returns:
        `Scores`.
    """
    import data
    from brt_keras.models.block_recurrent_stream_model import BlockRecurrentStreamModel
    from data.pipeline import document_index

    if reset_state not in RESET_MODES:
        raise ValueError(
            f"reset_state={reset_state!r}: choose one of {', '.join(RESET_MODES)}"
        )
    L = lm.segment_length
    dataset = data.long_document_dataset(
        "documents",
        "eval",
        segment_length=L,
        batch_size=batch_size,
        tokenizer=tokenizer,
        seed=0,
        repeat=False,
        documents=texts,
    )
    store = dataset.document_store
    if store.num_empty:
        # Indices must name the caller's documents: refuse to silently renumber them.
        raise ValueError(f"{store.num_empty} empty documents; drop them before scoring")
    n = len(store.texts)
    model = BlockRecurrentStreamModel(lm, batch_size)
    step, sync = make_step(model)
    scores = Scores(n, keep_tokens)
    opened = np.full(batch_size, -1)  # documents a slot has started
    docs = np.full(batch_size, -1)
    positions = np.zeros(batch_size, np.int64)
    for batch in dataset.as_numpy_iterator():
        if (max_segments and scores.segments >= max_segments) or (
            max_tokens and scores.total_tokens >= max_tokens
        ):
            scores.complete = False
            break
        start = batch["start_of_sequence"].astype(bool)
        for b in np.nonzero(start)[0]:
            opened[b] += 1
            slot_position = (
                b + opened[b] * batch_size
            )  # the pipeline's static round-robin
            docs[b] = int(document_index(slot_position, n, seed=0, epoch=0))
            positions[b] = -L
        positions += L
        live = np.where(batch["nonzero_tokens"] > 0, docs, -1)
        reset = start if reset_state == "never" else np.ones_like(start)
        nll, weights = step(
            {"token_ids": batch["token_ids"], "start_of_sequence": reset}
        )
        scores.add(
            live,
            positions,
            keras.ops.convert_to_numpy(nll),
            keras.ops.convert_to_numpy(weights),
            batch["num_bytes"],
        )
        if progress is not None:
            progress(scores)
    sync()
    return scores
