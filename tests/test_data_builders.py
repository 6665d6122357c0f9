"""TFDS builders, fetch atomicity, catalog data sets (mock_data, local pg19) on real files."""

import itertools
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data
from data import build as build_mod
from data import fetch_corpora
from data import rdata
from data import sources
from data.builders import split_of

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")


def _fixture_source(corpus, sub, raw_dir):
    docs = []
    for name in sorted(os.listdir(os.path.join(FIXTURES, sub))):
        with open(os.path.join(FIXTURES, sub, name), encoding="utf-8") as f:
            text = f.read()
        docs.append(
            sources.Document(name, name, text, "fixture", "public domain / MIT")
        )
    src = sources.Source(
        f"fixture-{sub}", corpus, "stdlib", (), lambda root: iter(docs), "test"
    )
    fetch_corpora.write_documents(os.path.join(raw_dir, corpus, src.name), src, docs)
    return {f"{src.name}/{d.doc_id}": d.text for d in docs}


def _load_all(name, data_dir):
    out = {}
    for split in tfds.builder(name, data_dir=data_dir).info.splits:
        for ex in tfds.load(name, split=split, data_dir=data_dir).as_numpy_iterator():
            out[ex["doc_id"].decode()] = (split, ex)
    return out


@pytest.mark.parametrize("corpus,sub", [("books", "books"), ("papers", "papers")])
def test_builder_on_real_files(tmp_path, corpus, sub):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
    expected = _fixture_source(corpus, sub, raw)
    build_mod.build(corpus, raw, out)
    got = _load_all(corpus, out)
    assert set(got) == set(expected)
    for doc_id, (split, ex) in got.items():
        assert ex["text"].decode() == expected[doc_id]
        assert split == split_of(doc_id)
        assert ex["source_package"] == b"fixture" and ex["license"]


def test_code_builder_on_stdlib_and_rerun_after_interruption(tmp_path):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
    docs = list(itertools.islice(sources._python_stdlib(""), 6))
    assert all("# ==== " in d.text for d in docs)
    src = sources.Source("python-stdlib", "code", "stdlib", (), None, "")
    fetch_corpora.write_documents(os.path.join(raw, "code", src.name), src, docs)
    # an interrupted earlier build left an incomplete directory behind
    os.makedirs(os.path.join(out, "code", "1.0.0.incompleteXYZ"))
    build_mod.build("code", raw, out)
    assert not [p for p in os.listdir(os.path.join(out, "code")) if "incomplete" in p]
    build_mod.build("code", raw, out)  # re-running a finished build is a no-op
    got = _load_all("code", out)
    assert {ex["text"].decode() for _, ex in got.values()} == {d.text for d in docs}
    assert {ex["license"] for _, ex in got.values()} == {b"PSF-2.0"}


def test_split_assignment_is_deterministic_and_balanced():
    splits = [split_of(f"doc-{i}") for i in range(3000)]
    assert splits == [split_of(f"doc-{i}") for i in range(3000)]
    share = splits.count("train") / len(splits)
    assert 0.75 < share < 0.85


def test_pipeline_on_built_corpus_and_missing_dataset(tmp_path):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
    with pytest.raises(
        data.DatasetNotPreparedError, match="python -m data.build --corpus books"
    ):
        data.long_document_dataset(
            "books", "train", segment_length=64, batch_size=1, data_dir=out
        )
    with pytest.raises(FileNotFoundError, match="data.fetch_corpora"):
        build_mod.build("books", raw, out)
    expected = _fixture_source("books", "books", raw)
    build_mod.build("books", raw, out)
    store = data.load_documents("books", "all", out)
    assert sorted(store.texts) == sorted(t.encode() for t in expected.values())
    ds = data.long_document_dataset(
        "books", "all", segment_length=256, batch_size=2, data_dir=out
    )
    batch = next(iter(ds))
    assert (
        batch["token_ids"].shape == (2, 256)
        and batch["start_of_sequence"].numpy().all()
    )


@pytest.mark.parametrize("name", ["pg19", "scientific_papers/arxiv"])
def test_catalog_datasets_with_mock_data(name):
    with tfds.testing.mock_data(num_examples=6):
        ds = data.long_document_dataset(
            name, "train", segment_length=32, batch_size=2, repeat=False
        )
        batches = list(ds.as_numpy_iterator())
    assert batches and batches[0]["start_of_sequence"].all()
    assert sum(int(b["nonzero_tokens"].sum()) for b in batches) > 0


def test_pg19_builder_on_local_folder(tmp_path, monkeypatch):
    from tensorflow_datasets.datasets.pg19 import pg19_dataset_builder as pg19

    src = tmp_path / "gutenberg"
    books = sorted(os.listdir(os.path.join(FIXTURES, "books")))
    rows, texts = [], {}
    for i, (split, name) in enumerate(
        zip(["train", "train", "validation", "test"], books)
    ):
        os.makedirs(src / split, exist_ok=True)
        shutil.copy(
            os.path.join(FIXTURES, "books", name), src / split / f"{100 + i}.txt"
        )
        rows.append(f"{100 + i},{name},1900,http://example/{i}")
        with open(os.path.join(FIXTURES, "books", name), encoding="utf-8") as f:
            texts[split] = texts.get(split, []) + [f.read().strip().encode()]
    (src / "metadata.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(pg19, "_DATA_DIR", tfds.core.Path(str(src)))
    out = str(tmp_path / "tfds")
    tfds.builder("pg19", data_dir=out).download_and_prepare()
    store = data.load_documents("pg19", "train", out)
    assert sorted(store.texts) == sorted(texts["train"])
    ds = data.long_document_dataset(
        "pg19", "train", segment_length=4096, batch_size=2, data_dir=out, repeat=False
    )
    got = [b for b in ds.as_numpy_iterator()]
    assert sum(int(b["start_of_sequence"].sum()) for b in got) == 2


def test_fetch_is_atomic_and_reports_unavailable(tmp_path, monkeypatch, capsys):
    def broken(root):
        yield sources.Document("a", "a", "text", "p", "l")
        raise OSError("disk full while extracting")

    bad = sources.Source("broken", "books", "stdlib", (), broken, "breaks half-way")
    missing = sources.Source(
        "missing",
        "books",
        "deb",
        (
            sources.DebPackage(
                "no-such-package", "pool/main/n/none/none_1_all.deb", 1, "0" * 64
            ),
        ),
        lambda root: iter(()),
        "not on the mirror",
    )
    monkeypatch.setattr(fetch_corpora, "sources_for", lambda corpus: [bad, missing])
    monkeypatch.setattr(fetch_corpora.shutil, "which", lambda name: None)
    out = str(tmp_path / "raw")
    results = fetch_corpora.fetch(out, "books", mirror="http://127.0.0.1:9/debian")
    assert results["broken"].startswith("unavailable")
    assert "no-such-package unavailable" in results["missing"]
    assert "UNAVAILABLE" in capsys.readouterr().err
    leftovers = [p for p in os.listdir(os.path.join(out, "books"))]
    assert leftovers == []  # neither a partial source nor a temporary directory
    assert not [p for p in os.listdir(os.path.join(out, ".cache"))]


def test_fetch_python_stdlib_source(tmp_path, monkeypatch):
    small = sources.Source(
        "python-stdlib",
        "code",
        "stdlib",
        (),
        lambda root: itertools.islice(sources._python_stdlib(root), 3),
        "",
    )
    monkeypatch.setattr(fetch_corpora, "sources_for", lambda corpus: [small])
    out = str(tmp_path / "raw")
    assert fetch_corpora.main(["--out", out, "--corpus", "code"]) == 0
    assert fetch_corpora.fetch(out, "code")["python-stdlib"][0] == 3  # second run: kept


def _xdr(items):
    return b"X\n" + struct.pack(">iii", 2, 0x040000, 0x020300) + b"".join(items)


def _strsxp(strings, names=None):
    flags = 16 | (512 if names else 0)
    out = struct.pack(">ii", flags, len(strings))
    for s in strings:
        b = s.encode()
        out += struct.pack(">ii", 9 | (1 << 15), len(b)) + b
    if names:
        sym = struct.pack(">i", 1) + struct.pack(">ii", 9, 5) + b"names"
        out += (
            struct.pack(">i", 2 | 1024)
            + sym
            + _strsxp(names)[0:]
            + struct.pack(">i", 254)
        )
    return out


def test_rdata_reader_on_synthetic_lazyload_db(tmp_path):
    obj = _xdr(
        [_strsxp(["Call me Ishmael.", "Some years ago\u2014"], names=["a", "b"])]
    )
    record = struct.pack(">I", len(obj)) + zlib.compress(obj)
    (tmp_path / "Rdata.rdb").write_bytes(record)
    loc = struct.pack(">ii", 13, 2) + struct.pack(">ii", 0, len(record))
    variables = struct.pack(">ii", 19 | 512, 1) + loc
    variables += (
        struct.pack(">i", 2 | 1024) + struct.pack(">i", 1) + struct.pack(">ii", 9, 5)
    )
    variables += b"names" + _strsxp(["moby"]) + struct.pack(">i", 254)
    index = struct.pack(">ii", 19 | 512, 1) + variables
    index += struct.pack(">i", 2 | 1024) + struct.pack(">i", 255 | (1 << 8))
    index += _strsxp(["variables"]) + struct.pack(">i", 254)
    import gzip

    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(_xdr([index])))
    db = rdata.read_lazyload_db(str(tmp_path))
    assert db["moby"].value == ["Call me Ishmael.", "Some years ago\u2014"]
    assert db["moby"].names() == ["a", "b"]
    np.testing.assert_equal(len(db), 1)
