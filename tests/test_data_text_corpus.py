"""Your own documents as a corpus (data.build --corpus text): bad input, splits, atomic builds,
and the round trip through tfds.load and trainers.train."""

import json
import os

import pytest
import tensorflow_datasets as tfds

import data
from data import build as build_mod
from data import text_corpus
from data.builders import split_of
from trainers import testing


def _write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())


def _load(name, data_dir):
    """{doc_id: (split, text)} of every split of a prepared data set."""
    out = {}
    for split in tfds.builder(name, data_dir=data_dir).info.splits:
        for ex in tfds.load(name, split=split, data_dir=data_dir).as_numpy_iterator():
            out[ex["doc_id"].decode()] = (split, ex["text"].decode())
    return out


def _good_docs(root, n=12):
    docs = {}
    for i in range(n):
        rel = f"notes/n{i:02d}.md" if i % 2 else f"t{i:02d}.txt"
        docs[rel] = f"Document {i}: " + "some words " * (i + 1) + "\n"
        _write(os.path.join(root, rel), docs[rel])
    return docs


def _unreadable(monkeypatch, path):
    """Makes ``path`` unreadable: chmod 000, or, as root (who reads it anyway), a read
    that fails with the same PermissionError."""
    os.chmod(path, 0)
    if os.geteuid() == 0:
        real = text_corpus.read_bytes

        def read_bytes(p):
            if os.path.abspath(p) == os.path.abspath(path):
                raise PermissionError(13, "Permission denied", p)
            return real(p)

        monkeypatch.setattr(text_corpus, "read_bytes", read_bytes)


def _unlistable(monkeypatch, folder):
    """Makes ``folder`` unlistable: chmod 000, or, as root, a listing that fails the same way."""
    os.chmod(folder, 0)
    if os.geteuid() == 0:
        real = os.scandir

        def scandir(path="."):
            if isinstance(path, str) and os.path.abspath(path) == os.path.abspath(
                folder
            ):
                raise PermissionError(13, "Permission denied", path)
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)


def test_folder_bad_input_is_replaced_skipped_and_named(tmp_path, monkeypatch, capsys):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
    good = _good_docs(raw)
    _write(f"{raw}/bad_utf8.txt", b"caf\xe9 au lait \xff\n")
    _write(f"{raw}/empty.txt", b"")
    _write(f"{raw}/blank.md", b"  \n\t\n")
    _write(
        f"{raw}/image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    )
    _write(f"{raw}/late_nul.txt", b"text " * 2000 + b"\x00")  # NUL after 8 KiB: text
    _write(f"{raw}/locked.txt", b"secret\n")
    _unreadable(monkeypatch, f"{raw}/locked.txt")
    os.symlink(f"{raw}/gone.txt", f"{raw}/dangling.txt")
    _write(f"{raw}/locked_dir/inside.txt", b"cannot be listed\n")
    _unlistable(monkeypatch, f"{raw}/locked_dir")
    _write(f"{raw}/.git/config", b"[core]\n")
    _write(f"{raw}/.hidden.txt", b"hidden\n")

    assert build_mod.main(["--corpus", "text", "--raw_dir", raw, "--name", "mine",
                           "--data_dir", out]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "invalid UTF-8 replaced by U+FFFD in 1: bad_utf8.txt" in printed
    assert "skipped empty: 2: blank.md, empty.txt" in printed
    assert "skipped binary (NUL byte in the first 8 KiB): 1: image.png" in printed
    assert "could not read (skipped): 3:" in printed
    assert "locked_dir/ (PermissionError: Permission denied)" in printed
    assert "locked.txt (PermissionError: Permission denied)" in printed
    assert "dangling.txt (FileNotFoundError" in printed
    assert "left out hidden files/folders: 2" in printed
    assert f"prepared in {out}/mine/1.0.0" in printed

    monkeypatch.undo()
    os.chmod(f"{raw}/locked_dir", 0o755)
    got = _load("mine", out)
    assert set(got) == set(good) | {"bad_utf8.txt", "late_nul.txt"}
    for rel, text in good.items():
        assert got[rel][1] == text
    assert got["bad_utf8.txt"][1] == "caf\ufffd au lait \ufffd\n"
    summary = json.load(open(f"{out}/mine/1.0.0/build_summary.json"))
    assert summary["documents"] == len(good) + 2 and summary["binary"] == ["image.png"]


def test_extensions_filter(tmp_path):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
    good = _good_docs(raw)
    _write(f"{raw}/data.csv", "a,b\n1,2\n")
    _, report = build_mod.build_text(raw, "only_md", out, extensions=[".MD", "txt"])
    assert set(_load("only_md", out)) == set(good)
    assert report.filtered == 1 and report.seen == len(good)


def test_jsonl_bad_lines(tmp_path, capsys):
    raw, out = str(tmp_path / "docs.jsonl"), str(tmp_path / "tfds")
    lines = [
        json.dumps({"id": f"d{i}", "body": f"text number {i} " * 3}) for i in range(10)
    ]
    lines += [
        json.dumps({"body": "no id: named by its hash"}),
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"id": "x1", "text": "wrong field"}),
        json.dumps({"id": "x2", "body": 42}),
        json.dumps({"id": "d3", "body": "a duplicate id"}),
        json.dumps({"id": "e1", "body": "   "}),
        json.dumps({"id": "n1", "body": "bin\u0000ary"}),
        json.dumps({"id": "s1", "body": "lone \ud800 surrogate"}),
        "",
    ]
    data_bytes = (
        "\n".join(lines).encode() + b'\n{"id": "u1", "body": "raw \xff byte"}\n'
    )
    _write(raw, data_bytes)
    assert build_mod.main(["--corpus", "text", "--raw_dir", raw, "--name", "jl",
                           "--text_field", "body", "--data_dir", out]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "skipped invalid JSONL lines: 4" in printed
    assert "line 12 (not JSON" in printed and "line 13 (not a JSON object)" in printed
    assert "line 14 (field 'body' missing (has: id, text; see --text_field))" in printed
    assert "line 15 (field 'body' not a string" in printed
    assert "skipped duplicate ids (first kept): 1: line 16 (d3)" in printed
    assert "skipped empty: 1: line 17 (e1)" in printed
    assert "skipped binary (NUL byte in the first 8 KiB): 1: line 18 (n1)" in printed
    assert (
        "invalid UTF-8 replaced by U+FFFD in 2: line 19 (s1), line 21 (u1)" in printed
    )
    got = _load("jl", out)
    hashed = [k for k in got if k.startswith("sha256:")]
    assert len(hashed) == 1 and got[hashed[0]][1] == "no id: named by its hash"
    assert got["d3"][1] == "text number 3 " * 3
    assert got["s1"][1] == "lone \ufffd surrogate" and got["u1"][1] == "raw \ufffd byte"
    assert len(got) == 13


def test_splits_by_id_hash_are_stable(tmp_path):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
    good = _good_docs(raw, n=40)
    build_mod.build_text(raw, "stable", out)
    first = _load("stable", out)
    assert {k: s for k, (s, _) in first.items()} == {k: split_of(k) for k in good}
    assert {s for s, _ in first.values()} == {"train", "validation", "test"}
    # More documents, another folder name, a rebuild: every old document keeps its split.
    moved = str(tmp_path / "elsewhere")
    os.rename(raw, moved)
    _good_docs(os.path.join(moved, "more"), n=10)
    build_mod.build_text(moved, "stable", out, force=True)
    second = _load("stable", out)
    assert len(second) == 50
    assert all(second[k][0] == s for k, (s, _) in first.items())


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing", "does not exist: pass a folder of text files"),
        ("empty_dir", "no usable documents in .*: 0 files looked at"),
        (
            "only_bad",
            "(?s)no usable documents .* 2 files looked at.*skipped empty: 1.*binary",
        ),
        ("bad_jsonl", r"field 'text' missing .*see --text_field"),
        ("single_file", "is a file but not JSONL"),
    ],
)
def test_unusable_input_errors_name_the_fix(tmp_path, setup, message):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
    if setup == "empty_dir":
        os.makedirs(raw)
    elif setup == "only_bad":
        _write(f"{raw}/a.txt", b"")
        _write(f"{raw}/b.bin", b"\x00\x01")
    elif setup == "single_file":
        raw += ".txt"
        _write(raw, "one text file\n")
    elif setup == "bad_jsonl":
        raw += ".jsonl"
        _write(raw, json.dumps({"content": "x"}) + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_mod.build_text(raw, "nothing", out)
    assert not os.path.exists(os.path.join(out, "nothing"))


def test_bad_names(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    _good_docs(raw, n=2)
    with pytest.raises(ValueError, match="--name=my_docs"):
        build_mod.build_text(raw, "My Docs", str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="taken by a built-in .* --name=my_books"):
        build_mod.build_text(raw, "books", str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="taken"):
        build_mod.build_text(raw, "mnist", str(tmp_path / "tfds"))
    assert (
        build_mod.main(["--corpus", "text", "--raw_dir", raw, "--name", "Bad-Name"])
        == 2
    )
    assert "--name=bad_name" in capsys.readouterr().err


def test_failed_rebuild_keeps_the_old_dataset(tmp_path, monkeypatch, capsys):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
    good = _good_docs(raw)
    build_mod.build_text(raw, "keep", out)
    before = _load("keep", out)
    _write(f"{raw}/new.txt", "a new document\n")

    # Already prepared: left as is without --force.
    assert build_mod.main(["--corpus", "text", "--raw_dir", raw, "--name", "keep",
                           "--data_dir", out]) == 0  # fmt: skip
    assert "already prepared; pass --force" in capsys.readouterr().out
    assert _load("keep", out) == before

    # A rebuild that fails while TFDS writes the examples.
    def broken(self, docs):
        yield from ()
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(text_corpus.TextCorpus, "_generate_examples", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        build_mod.build_text(raw, "keep", out, force=True)
    monkeypatch.undo()
    # A rebuild from an input with nothing usable.
    with pytest.raises(ValueError, match="no usable documents"):
        os.makedirs(tmp_path / "empty")
        build_mod.build_text(str(tmp_path / "empty"), "keep", out, force=True)
    assert _load("keep", out) == before
    assert sorted(os.listdir(out)) == ["keep"]  # no temporary directory left behind
    assert sorted(os.listdir(os.path.join(out, "keep"))) == ["1.0.0"]

    # A rebuild that succeeds replaces it.
    build_mod.build_text(raw, "keep", out, force=True)
    assert set(_load("keep", out)) == set(good) | {"new.txt"}
    assert sorted(os.listdir(os.path.join(out, "keep"))) == ["1.0.0"]


def test_round_trip_through_pipeline_and_trainer(tmp_path):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
    text = open(os.path.join(testing.FIXTURES, "moby_dick_ch1-3.txt")).read()
    size = len(text) // 30 + 1
    for i in range(30):
        _write(f"{raw}/part{i:02d}.txt", text[i * size : (i + 1) * size])
    assert build_mod.main(["--corpus", "text", "--raw_dir", raw, "--name", "moby",
                           "--data_dir", out]) == 0  # fmt: skip
    store = data.load_documents("moby", "train", out)
    expected = [
        f"part{i:02d}.txt" for i in range(30) if split_of(f"part{i:02d}.txt") == "train"
    ]
    assert len(store.texts) == len(expected) > 2
    ds = data.long_document_dataset("moby", "train", segment_length=32, batch_size=2,
                                    data_dir=out, repeat=False)  # fmt: skip
    tokens = sum(int(b["nonzero_tokens"].sum()) for b in ds.as_numpy_iterator())
    assert tokens == sum(len(t) for t in store.texts)  # byte tokens

    model_dir = str(tmp_path / "run")
    testing.run_module(
        "trainers.train",
        ["--model_dir", model_dir, "--corpus", "moby", "--data_dir", out, "--steps", "2",
         "--size", "tiny", "--batch_size", "2", "--warmup_steps", "1", "--verbose", "0",
         "--save_plot=false", "--chunk_steps", "2"],
    )  # fmt: skip
    history = testing.read_history(model_dir)
    assert [r["step"] for r in history] == [1, 2]
    assert all(r["loss"] > 0 for r in history)
    config = json.load(open(os.path.join(model_dir, "config.json")))
    assert config["corpus"] == "moby"
