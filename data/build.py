"""Prepare a local corpus as a TFDS dataset.

    python -m data.build --corpus books|papers|code --raw_dir RAW_DIR [--data_dir DATA_DIR]
    python -m data.build --corpus text --raw_dir DIR_OR_JSONL --name NAME [--data_dir DATA_DIR]

``--corpus text`` turns your own documents (a folder of text files or a JSONL file, see
``data/text_corpus.py``) into the data set ``NAME``, read by ``tfds.load(NAME, data_dir=...)`` and
``python -m trainers.train --corpus NAME --data_dir DATA_DIR``.

Every build goes into a temporary directory inside ``DATA_DIR`` and is moved into place only when
it is complete, so a failed or interrupted build leaves any dataset already there as it was
(a failed ``--force`` rebuild included); re-running removes leftovers. A dataset already prepared
is left as is (pass ``--force`` to rebuild). ``DATA_DIR`` defaults to TFDS's
(``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile

import tensorflow_datasets as tfds

from data.builders import BUILDERS

TEXT = "text"


def _default_data_dir(data_dir):
    return os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)


def remove_leftovers(data_dir: str, name: str) -> None:
    """Deletes what interrupted builds left: our ``.building-*`` directories and TFDS's
    ``*incomplete*`` ones (never read; removed so the disk does not fill up)."""
    patterns = (
        os.path.join(data_dir, f".{name}.building-*"),
        os.path.join(data_dir, name, "*incomplete*"),
        os.path.join(data_dir, name, ".*.replaced-*"),
    )
    for pattern in patterns:
        for path in glob.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def prepare_atomically(builder_cls, data_dir: str, download_config=None, extra=None):
    """Builds ``builder_cls`` in a temporary ``data_dir`` and moves the finished version
    directory into ``data_dir``; on any failure ``data_dir`` is untouched. ``extra``: file
    name -> text written next to the data (e.g. a build summary). Returns the final builder."""
    name = builder_cls.name
    os.makedirs(data_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.building-", dir=data_dir)
    try:
        fresh = builder_cls(data_dir=tmp)
        fresh.download_and_prepare(download_config=download_config)
        version = str(fresh.version)
        built = os.path.join(tmp, name, version)
        for fname, text in (extra or {}).items():
            with open(os.path.join(built, fname), "w") as f:
                f.write(text)
        final = os.path.join(data_dir, name, version)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        old = None
        if os.path.exists(final):
            old = tempfile.mkdtemp(
                prefix=f".{version}.replaced-", dir=os.path.dirname(final)
            )
            os.rename(final, os.path.join(old, "data"))
        try:
            os.rename(built, final)
        except OSError:
            if old is not None:  # put the old dataset back
                os.rename(os.path.join(old, "data"), final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return builder_cls(data_dir=data_dir)


def build(corpus: str, raw_dir: str, data_dir: str | None = None, force: bool = False):
    """Builds ``corpus`` from ``raw_dir/<corpus>`` into ``data_dir``; returns the builder."""
    if corpus not in BUILDERS:
        raise ValueError(
            f"unknown corpus {corpus!r}; choose from {sorted(BUILDERS)} or {TEXT!r} "
            "(your own documents, with --name)"
        )
    data_dir = _default_data_dir(data_dir)
    manual = os.path.join(raw_dir, corpus)
    if not os.path.isdir(manual):
        raise FileNotFoundError(
            f"{manual} does not exist. Fetch it first: "
            f"python -m data.fetch_corpora --out {raw_dir} --corpus {corpus}"
        )
    remove_leftovers(data_dir, corpus)
    builder = BUILDERS[corpus](data_dir=data_dir)
    if builder.is_prepared() and not force:
        return builder
    return prepare_atomically(
        BUILDERS[corpus], data_dir, tfds.download.DownloadConfig(manual_dir=manual)
    )


def reserved_names():
    """Names a text corpus may not take: ours and the TFDS catalog's."""
    return set(BUILDERS) | set(tfds.list_builders(with_community_datasets=False))


def build_text(
    raw: str,
    name: str,
    data_dir: str | None = None,
    *,
    force: bool = False,
    text_field: str = "text",
    id_field: str = "id",
    extensions=None,
    license: str = "",
):
    """Builds your own documents (folder or JSONL ``raw``) as the data set ``name``.

    Returns ``(builder, report)``; ``report`` is None when the data set was already prepared
    and ``force`` is False. Raises ``ValueError``/``FileNotFoundError`` naming the fix for a bad
    name, a missing input or a corpus with no usable document, before anything is written.
    """
    import json

    from data import text_corpus

    text_corpus.check_name(name, reserved_names())
    data_dir = _default_data_dir(data_dir)
    if not os.path.exists(raw):
        text_corpus.scan(raw)  # raises the error that names the fix
    remove_leftovers(data_dir, name)
    existing = text_corpus.text_corpus_builder(name)(data_dir=data_dir)
    if existing.is_prepared() and not force:
        return existing, None
    docs, report = text_corpus.scan(raw, text_field, id_field, extensions)
    cls = text_corpus.text_corpus_builder(
        name, docs, source=os.path.basename(os.path.normpath(raw)), license=license
    )
    summary = json.dumps(
        {"name": name, "raw": os.path.abspath(raw), **report.as_dict()}, indent=1
    )
    builder = prepare_atomically(cls, data_dir, extra={"build_summary.json": summary})
    return builder, report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, choices=sorted(BUILDERS) + [TEXT])
    parser.add_argument(
        "--raw_dir",
        required=True,
        help="fetched corpora (books|papers|code) or, for text, a folder or .jsonl file",
    )
    parser.add_argument(
        "--data_dir", default=None, help="TFDS data_dir (default: TFDS's)"
    )
    parser.add_argument("--name", help="--corpus text: the data set's name")
    parser.add_argument(
        "--text_field", default="text", help="--corpus text, JSONL: the text field"
    )
    parser.add_argument(
        "--id_field",
        default="id",
        help="--corpus text, JSONL: the document id field (else the text's SHA-256)",
    )
    parser.add_argument(
        "--extensions",
        default="",
        help="--corpus text, folder: only these file extensions, e.g. .txt,.md (default: all)",
    )
    parser.add_argument(
        "--license", default="", help="--corpus text: licence of the texts"
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild a prepared dataset"
    )
    args = parser.parse_args(argv)
    try:
        if args.corpus == TEXT:
            if not args.name:
                parser.error("--corpus text needs --name NAME (the data set's name)")
            exts = [e.strip() for e in args.extensions.split(",") if e.strip()]
            builder, report = build_text(
                args.raw_dir,
                args.name,
                args.data_dir,
                force=args.force,
                text_field=args.text_field,
                id_field=args.id_field,
                extensions=exts,
                license=args.license,
            )
            if report is None:
                print(
                    f"{args.name} is already prepared; pass --force to rebuild it from "
                    f"{args.raw_dir}"
                )
            else:
                print(report.summary())
        else:
            builder = build(args.corpus, args.raw_dir, args.data_dir, args.force)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split_name, split in builder.info.splits.items():
        print(
            f"{builder.name}/{split_name}: {split.num_examples} documents, "
            f"{int(split.num_bytes)} bytes"
        )
    print(f"prepared in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
