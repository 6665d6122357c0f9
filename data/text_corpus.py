"""Your own documents as a corpus: a folder of text files or a JSONL file -> a TFDS data set.

    python -m data.build --corpus text --raw_dir DIR_OR_JSONL --name NAME [--data_dir D]

A folder gives one document per file (recursive, sorted; hidden files and folders such as
``.git`` are left out; ``--extensions .txt,.md`` narrows the files). A ``.jsonl`` file gives one
document per line from its ``--text_field`` (default ``text``). Splits are assigned from the
document id as for the built-in corpora (``data.builders.split_of``): the file's path relative to
the folder, the line's ``--id_field`` value, or else the SHA-256 of the text.

Bad input never stops the build: invalid UTF-8 is replaced by U+FFFD and counted, empty
(whitespace-only) and binary documents (a NUL byte in the first 8 KiB) are skipped and counted, a
file that cannot be read and a JSONL line that is not an object with a string text field are
named. :meth:`ScanReport.summary` says all of it.

The builder is a ``data.builders._LocalCorpus`` subclass made per name
(:func:`text_corpus_builder`) and not registered: once built, ``tfds.load(NAME, data_dir=D)``
reads it from its files in any process, as does ``data.long_document_dataset(NAME, ...)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import types

from data.builders import SPLIT_FRACTIONS
from data.builders import _LocalCorpus
from data.builders import split_of

BINARY_PROBE_BYTES = 8192
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
_LISTED = 10  # names listed per kind of problem in the summary


@dataclasses.dataclass
class Document:
    doc_id: str
    title: str
    text: str


@dataclasses.dataclass
class ScanReport:
    """What a scan kept and what it skipped (ids or paths, relative to the input)."""

    source: str
    seen: int = 0  # files (folder) or non-blank lines (JSONL) looked at
    documents: int = 0
    replaced: list = dataclasses.field(default_factory=list)  # invalid UTF-8
    empty: list = dataclasses.field(default_factory=list)
    binary: list = dataclasses.field(default_factory=list)
    unreadable: list = dataclasses.field(default_factory=list)  # (path, reason)
    invalid: list = dataclasses.field(default_factory=list)  # (JSONL line, reason)
    duplicates: list = dataclasses.field(default_factory=list)
    filtered: int = 0  # files whose extension --extensions leaves out
    hidden: int = 0  # hidden files and folders left out
    splits: dict = dataclasses.field(default_factory=dict)

    def as_dict(self):
        return dataclasses.asdict(self)

    def skipped(self) -> int:
        return (
            len(self.empty)
            + len(self.binary)
            + len(self.unreadable)
            + len(self.invalid)
            + len(self.duplicates)
        )

    def summary(self) -> str:
        """Human-readable lines: counts, then up to 10 names per kind of problem."""

        def listed(items):
            names = [i if isinstance(i, str) else f"{i[0]} ({i[1]})" for i in items]
            more = len(names) - _LISTED
            return ", ".join(names[:_LISTED]) + (
                f", ... and {more} more" if more > 0 else ""
            )

        split_text = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        lines = [
            f"{self.source}: {self.seen} looked at -> {self.documents} documents"
            + (f" ({split_text})" if split_text else "")
        ]
        kinds = (
            ("invalid UTF-8 replaced by U+FFFD in", self.replaced),
            ("skipped empty:", self.empty),
            ("skipped binary (NUL byte in the first 8 KiB):", self.binary),
            ("could not read (skipped):", self.unreadable),
            ("skipped invalid JSONL lines:", self.invalid),
            ("skipped duplicate ids (first kept):", self.duplicates),
        )
        for label, items in kinds:
            if items:
                lines.append(f"  {label} {len(items)}: {listed(items)}")
        if self.filtered:
            lines.append(f"  left out by --extensions: {self.filtered} files")
        if self.hidden:
            lines.append(f"  left out hidden files/folders: {self.hidden}")
        missing = [name for name, _ in SPLIT_FRACTIONS if not self.splits.get(name)]
        if self.documents and missing:
            lines.append(
                f"  note: no {'/'.join(missing)} documents (splits are 80/10/10 by id hash); "
                "add documents to get every split"
            )
        return "\n".join(lines)


def check_name(name: str, reserved=()) -> None:
    """A TFDS-style data set name that no built-in or catalog builder uses."""
    if not name or not NAME_PATTERN.match(name):
        suggestion = re.sub(r"[^a-z0-9_]+", "_", (name or "docs").lower()).strip("_")
        if not suggestion or not suggestion[0].isalpha():
            suggestion = "docs_" + suggestion
        raise ValueError(
            f"--name={name!r} is not a data set name: use lower-case letters, digits and _, "
            f"starting with a letter, e.g. --name={suggestion}"
        )
    if name in reserved:
        raise ValueError(
            f"--name={name!r} is taken by a built-in or TFDS catalog data set; "
            f"choose another, e.g. --name=my_{name}"
        )


def _check_text(text: str, replaced: bool, label: str, report: ScanReport) -> bool:
    """Counts the document's problems; False when it is binary or empty (skipped)."""
    if "\x00" in text[:BINARY_PROBE_BYTES]:
        report.binary.append(label)
        return False
    if replaced:
        report.replaced.append(label)
    if not text.strip():
        report.empty.append(label)
        return False
    return True


def _decode(raw: bytes, label: str, report: ScanReport):
    """The text of one file, or None when it is binary or empty (counted)."""
    if b"\x00" in raw[:BINARY_PROBE_BYTES]:
        report.binary.append(label)
        return None
    text = raw.decode("utf-8", errors="replace")
    return text if _check_text(text, not _valid_utf8(raw), label, report) else None


def read_bytes(path: str) -> bytes:
    """The whole file; a non-regular file (FIFO, device) raises OSError rather than block."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"not a regular file: {path}")
    with open(path, "rb") as f:
        return f.read()


def scan_folder(root: str, extensions=None):
    """(documents, report) for every file under ``root``; ids are relative POSIX paths."""
    exts = {e if e.startswith(".") else "." + e for e in extensions or ()}
    exts = {e.lower() for e in exts}
    report = ScanReport(source=root)
    docs = []

    def walk_error(e):  # a folder that cannot be listed is named, not silently skipped
        rel = os.path.relpath(e.filename, root).replace(os.sep, "/")
        report.unreadable.append((rel + "/", f"{type(e).__name__}: {e.strerror or e}"))

    for folder, dirs, files in os.walk(root, onerror=walk_error):
        hidden_dirs = [d for d in dirs if d.startswith(".")]
        report.hidden += len(hidden_dirs)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for fname in sorted(files):
            if fname.startswith("."):
                report.hidden += 1
                continue
            path = os.path.join(folder, fname)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if exts and os.path.splitext(fname)[1].lower() not in exts:
                report.filtered += 1
                continue
            report.seen += 1
            try:
                raw = read_bytes(path)
            except OSError as e:
                reason = e.strerror or str(e)
                report.unreadable.append((rel, f"{type(e).__name__}: {reason}"))
                continue
            text = _decode(raw, rel, report)
            if text is not None:
                docs.append(Document(rel, fname, text))
    return docs, report


def scan_jsonl(path: str, text_field: str = "text", id_field: str = "id"):
    """(documents, report) for the lines of a JSONL file (blank lines ignored)."""
    report = ScanReport(source=path)
    docs, seen_ids = [], set()
    try:
        data = read_bytes(path)
    except OSError as e:
        raise OSError(
            f"cannot read {path}: {type(e).__name__}: {e.strerror or e}"
        ) from e
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        report.seen += 1
        where = f"line {number}"
        bad = not _valid_utf8(line)
        try:
            record = json.loads(line.decode("utf-8", errors="replace"))
        except ValueError as e:
            report.invalid.append((where, f"not JSON: {getattr(e, 'msg', e)}"))
            continue
        if not isinstance(record, dict):
            report.invalid.append((where, "not a JSON object"))
            continue
        text = record.get(text_field)
        if not isinstance(text, str):
            found = "missing" if text_field not in record else "not a string"
            fields = ", ".join(sorted(record)[:8])
            report.invalid.append(
                (
                    where,
                    f"field {text_field!r} {found} (has: {fields}; see --text_field)",
                )
            )
            continue
        # JSON escapes can carry lone surrogates ("\\ud800"), which are not UTF-8 either.
        clean = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        bad = bad or clean != text
        if record.get(id_field) is not None:
            doc_id = str(record[id_field])
        else:
            doc_id = "sha256:" + hashlib.sha256(clean.encode("utf-8")).hexdigest()[:32]
        if doc_id in seen_ids:
            report.duplicates.append(f"{where} ({doc_id})")
            continue
        label = f"{where} ({doc_id})" if len(doc_id) <= 80 else where
        if _check_text(clean, bad, label, report):
            seen_ids.add(doc_id)
            title = record.get("title")
            title = title if isinstance(title, str) else doc_id
            docs.append(Document(doc_id, title, clean))
    return docs, report


def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def scan(raw: str, text_field: str = "text", id_field: str = "id", extensions=None):
    """Scans a folder or a JSONL file; errors name the fix."""
    if not os.path.exists(raw):
        raise FileNotFoundError(
            f"--raw_dir {raw} does not exist: pass a folder of text files (.txt, .md, source "
            "files; one document per file) or a .jsonl file with one JSON object per line"
        )
    if os.path.isdir(raw):
        docs, report = scan_folder(raw, extensions)
    elif not raw.endswith(JSONL_SUFFIXES):
        raise ValueError(
            f"--raw_dir {raw} is a file but not JSONL ({', '.join(JSONL_SUFFIXES)}): pass the "
            "folder that holds your text files, or a JSONL file with one object per line"
        )
    else:
        docs, report = scan_jsonl(raw, text_field, id_field)
    report.documents = len(docs)
    counts = {name: 0 for name, _ in SPLIT_FRACTIONS}
    for d in docs:
        counts[split_of(d.doc_id)] += 1
    report.splits = counts
    if not docs:
        kind = "files" if os.path.isdir(raw) else "lines"
        raise ValueError(
            f"no usable documents in {raw}: {report.seen} {kind} looked at, all skipped.\n"
            f"{report.summary()}\n"
            "Fix: put UTF-8 text files (.txt, .md, source files) in the folder (hidden files and "
            "--extensions filters are left out), or pass a .jsonl file whose objects hold the "
            "text in --text_field."
        )
    return docs, report


class TextCorpus(_LocalCorpus, skip_registration=True):
    """Documents scanned from a folder or JSONL file; subclassed per name."""

    DESCRIPTION = "Your own documents (python -m data.build --corpus text)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = None
    DOCUMENTS: tuple = ()
    SOURCE = ""
    LICENSE = ""

    def _split_generators(self, dl_manager):
        by_split = {name: [] for name, _ in SPLIT_FRACTIONS}
        for doc in self.DOCUMENTS:
            by_split[split_of(doc.doc_id)].append(doc)
        # TFDS cannot write an empty split; a tiny corpus may leave one empty: omit it.
        return {
            name: self._generate_examples(docs)
            for name, docs in by_split.items()
            if docs
        }

    def _generate_examples(self, docs):
        for doc in docs:
            yield (
                doc.doc_id,
                {
                    "text": doc.text,
                    "doc_id": doc.doc_id,
                    "title": doc.title,
                    "source_package": self.SOURCE,
                    "license": self.LICENSE,
                },
            )


def text_corpus_builder(name: str, documents=(), source: str = "", license: str = ""):
    """A `TextCorpus` subclass whose TFDS name is ``name`` (not registered)."""

    def body(ns):
        ns.update(
            name=name,
            DOCUMENTS=tuple(documents),
            SOURCE=source,
            LICENSE=license,
            __module__=__name__,
        )

    class_name = "".join(p.capitalize() for p in name.split("_")) or "TextCorpusBuilder"
    return types.new_class(class_name, (TextCorpus,), {"skip_registration": True}, body)
