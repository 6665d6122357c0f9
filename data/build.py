"""Prepare a local corpus as a TFDS dataset.

    python -m data.build --corpus books|papers|code --raw_dir RAW_DIR --data_dir DATA_DIR

TFDS writes into a temporary ``*.incomplete*`` directory and renames it when the build is complete,
so an interrupted build leaves no half-written dataset; re-running removes leftovers and builds
again. A dataset already prepared is left as is (pass ``--force`` to rebuild).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys

import tensorflow_datasets as tfds

from data.builders import BUILDERS


def build(corpus: str, raw_dir: str, data_dir: str, force: bool = False):
    """Builds ``corpus`` from ``raw_dir/<corpus>`` into ``data_dir``; returns the builder."""
    if corpus not in BUILDERS:
        raise ValueError(f"unknown corpus {corpus!r}; choose from {sorted(BUILDERS)}")
    manual = os.path.join(raw_dir, corpus)
    if not os.path.isdir(manual):
        raise FileNotFoundError(
            f"{manual} does not exist. Fetch it first: "
            f"python -m data.fetch_corpora --out {raw_dir} --corpus {corpus}"
        )
    builder = BUILDERS[corpus](data_dir=data_dir)
    # Leftovers of an interrupted build (TFDS names them "<version>.incomplete<random>" or
    # "incomplete.<random>"); they are never read, remove them so the disk does not fill up.
    for path in glob.glob(os.path.join(data_dir, corpus, "*incomplete*")):
        shutil.rmtree(path, ignore_errors=True)
    if force and builder.is_prepared():
        shutil.rmtree(builder.data_dir)
        builder = BUILDERS[corpus](data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual)
    )
    return builder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--raw_dir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument(
        "--force", action="store_true", help="rebuild a prepared dataset"
    )
    args = parser.parse_args(argv)
    builder = build(args.corpus, args.raw_dir, args.data_dir, args.force)
    for name, split in builder.info.splits.items():
        print(
            f"{args.corpus}/{name}: {split.num_examples} documents, {split.num_bytes} bytes"
        )
    print(f"prepared in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
