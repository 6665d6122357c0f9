"""Checkpoint save time and size per host: the TensorFlow backend's format
(trainers/checkpoints.py) against Orbax (trainers/orbax_checkpoints.py).

    KERAS_BACKEND=jax taskset -c 1 python -m benchmarks.checkpoint_io [--quick]

Builds the model, the stream model (batch 8, carried state) and a built
optimizer, then saves each format ``--repeats`` times into a fresh local
directory. Reports, per format: the time ``save()`` blocks the training loop,
the time until the files are complete (Orbax writes in the background), and
the bytes this host wrote. One process, so "per host" is everything here; on
a multi-host run the old format writes one full copy per host (``process_<i>/``)
while Orbax writes each array shard once, by the host that owns it.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from benchmarks import common  # noqa: E402


def _sizes(path):
    total = 0
    for d, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", default="small_37m")
    parser.add_argument("--preset", default="rec_fixed_skip")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats = "tiny", 2
    if common.backend() != "jax":
        raise SystemExit("Orbax checkpoints are the JAX backend's: KERAS_BACKEND=jax")
    import keras
    import numpy as np

    from trainers import common as tcommon
    from trainers import orbax_checkpoints
    from trainers.checkpoints import CheckpointManager as OldManager

    config = tcommon.resolve_model_config(args.preset, args.size, [])
    lm = tcommon.build_lm(config, args.seed)
    model = tcommon.build_stream_model(lm, args.batch)
    optimizer = tcommon.make_optimizer("adafactor", "rsqrt", None, 1000, 1000)
    model.compile(optimizer=optimizer, loss=tcommon.training_loss())
    optimizer.build(model.trainable_variables)
    state = tcommon.get_stream_state(model, training=True)
    n_params = sum(int(np.prod(v.shape)) for v in lm.weights)
    common.log(
        f"[checkpoint_io] {args.preset}/{args.size}: {n_params / 1e6:.1f}M weights"
    )

    def old_format(directory):
        manager = OldManager(directory, keep=1)
        t0 = time.perf_counter()
        manager.save(1, lm, optimizer, state)
        t = time.perf_counter() - t0
        return t, t

    def orbax_format(directory):
        manager = orbax_checkpoints.CheckpointManager(directory, keep=1)
        t0 = time.perf_counter()
        manager.save(1, lm, optimizer, state)
        blocked = time.perf_counter() - t0
        manager.wait_until_finished()
        done = time.perf_counter() - t0
        manager.close()
        return blocked, done

    rows, results = [], []
    for name, fn in (("old (h5 + npz)", old_format), ("orbax (async)", orbax_format)):
        blocked, done, size = [], [], 0
        for i in range(args.repeats + 1):  # the first is a warm-up
            root = tempfile.mkdtemp(prefix="brt-ckpt-io-")
            try:
                b, d = fn(os.path.join(root, "checkpoints"))
                size = _sizes(root)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            if i:
                blocked.append(b)
                done.append(d)
        r = {
            "format": name,
            "preset": args.preset,
            "size": args.size,
            "weights_M": n_params / 1e6,
            "save_blocks_s": statistics.median(blocked),
            "save_complete_s": statistics.median(done),
            "bytes_per_host": size,
            "repeats": args.repeats,
        }
        results.append(r)
        rows.append(
            [name, args.size, r["save_blocks_s"], r["save_complete_s"], size / 2**20]
        )
        common.log(f"  {name}: {r}")
    keras.backend.clear_session()
    common.report(
        "checkpoint_io",
        f"Checkpoint save time and size per host ({args.preset}/{args.size}, "
        f"batch {args.batch}, one host)",
        ["format", "size", "save blocks s", "save complete s", "MiB per host"],
        rows,
        {"results": results, "pinned_cpus": sorted(os.sched_getaffinity(0))},
        args.out_dir,
        [
            f"median of {args.repeats} saves after a warm-up, local disk",
            "old format: weights (h5), optimizer, stream state, seeds (npz), SHA-256 "
            "manifest; written synchronously; on N hosts, N full copies",
            "orbax: the same state as sharded arrays; save() blocks for the "
            "device-to-host copy, the files are written in the background",
        ],
    )


if __name__ == "__main__":
    main()
