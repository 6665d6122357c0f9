"""Run paths that may be local or remote (``gs://bucket/run``, ``ram://...``).

The trainers read and write their run directories only through these
functions, so ``--model_dir``, ``--data_dir`` and ``--export_dir`` accept a
URL as well as a local path:

* local paths (and ``file://``) use ``os`` directly (atomic ``os.replace``);
* ``gs://`` (and ``s3://``, ``memory://``, ...) use fsspec, i.e. gcsfs for
  ``gs://``; set ``BRT_REMOTE_FS=gfile`` to use ``tf.io.gfile`` instead;
* TensorFlow-only schemes (``ram://``, ``hdfs://``) use ``tf.io.gfile``.

Libraries that want a real local file (Keras ``.keras`` / ``.h5``, the
``tf.train.Checkpoint`` of a tf.data iterator) go through ``staged_dir`` /
``local_copy``: they write into a local temporary directory that is then
uploaded, or read a downloaded copy.

When ``STORAGE_EMULATOR_HOST`` is set (a local GCS emulator, as in the
tests), the libraries that can be pointed at it are: gcsfs (it reads that
variable itself), etils ``epath`` (sent to gcsfs instead of
``tf.io.gfile``, whose GCS client has no endpoint setting) and tensorstore
(``TENSORSTORE_GCS_HTTP_URL``), which Orbax uses for array data.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import posixpath
import re
import shutil
import tempfile

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
GFILE_SCHEMES = ("ram", "hdfs", "viewfs")


def configure_emulator():
    """Points epath, gcsfs and tensorstore at ``STORAGE_EMULATOR_HOST`` when
    it is set (nothing otherwise); must run before gcsfs is imported."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return
    if not host.startswith("http"):
        host = "http://" + host
    # The emulator has no gRPC storage-control API, which gcsfs' bucket-type
    # probe would wait a minute for on every new bucket.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    os.environ.setdefault("EPATH_USE_TF", "false")
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")


configure_emulator()


def scheme(path) -> str | None:
    m = _SCHEME.match(str(path))
    return m.group(1).lower() if m else None


def is_remote(path) -> bool:
    return scheme(path) not in (None, "file")


def _local(path):
    path = os.fspath(path)
    return path[len("file://") :] if path.startswith("file://") else path


def join(path, *parts) -> str:
    path = os.fspath(path)
    if is_remote(path):
        return posixpath.join(path, *parts)
    return os.path.join(path, *parts)


def basename(path) -> str:
    return posixpath.basename(os.fspath(path).rstrip("/"))


def dirname(path) -> str:
    path = os.fspath(path).rstrip("/")
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def _use_gfile(path) -> bool:
    s = scheme(path)
    return s in GFILE_SCHEMES or (
        s is not None
        and s != "file"
        and os.environ.get("BRT_REMOTE_FS", "fsspec").lower() == "gfile"
    )


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _fs(path):
    """(fsspec filesystem, path inside it) with fresh listings: another
    process (another host) may have written since the last call."""
    import fsspec

    fs, inner = fsspec.core.url_to_fs(os.fspath(path))
    fs.invalidate_cache()
    return fs, inner


def exists(path) -> bool:
    if not is_remote(path):
        return os.path.exists(_local(path))
    if _use_gfile(path):
        return _gfile().exists(path)
    fs, p = _fs(path)
    return fs.exists(p)


def isdir(path) -> bool:
    if not is_remote(path):
        return os.path.isdir(_local(path))
    if _use_gfile(path):
        return _gfile().isdir(path)
    fs, p = _fs(path)
    return fs.isdir(p)


def makedirs(path):
    """Creates ``path`` and its parents (on object stores: nothing to do
    beyond a marker-free no-op, directories exist once they hold a file)."""
    if not is_remote(path):
        os.makedirs(_local(path), exist_ok=True)
    elif _use_gfile(path):
        _gfile().makedirs(path)
    else:
        fs, p = _fs(path)
        fs.makedirs(p, exist_ok=True)


def listdir(path) -> list[str]:
    """Names of the entries of a directory (empty when it does not exist)."""
    if not is_remote(path):
        p = _local(path)
        return sorted(os.listdir(p)) if os.path.isdir(p) else []
    if _use_gfile(path):
        g = _gfile()
        if not g.isdir(path):
            return []
        names = {n.rstrip("/") for n in g.listdir(path)}
        return sorted(n for n in names if g.exists(posixpath.join(path, n)))
    fs, p = _fs(path)
    if not fs.exists(p):
        return []
    return sorted({posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False)})


def open(path, mode="r"):  # noqa: A001 - the file-like counterpart of builtins.open
    if not is_remote(path):
        return builtins.open(_local(path), mode)
    if _use_gfile(path):
        if "w" in mode and _gfile().exists(path):
            # TensorFlow's ram:// file system appends to an existing file
            # opened for writing; truncate by removing it first.
            _gfile().remove(path)
        return _gfile().GFile(path, mode)
    fs, p = _fs(path)
    return fs.open(p, mode)


def read_text(path) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def write_text(path, text, atomic=True):
    """Writes ``text``; locally through a temporary file and a rename, so a
    reader never sees half a file (object stores publish whole objects)."""
    if not is_remote(path):
        p = _local(path)
        tmp = p + ".tmp" if atomic else p
        with builtins.open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        if atomic:
            os.replace(tmp, p)
        return
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))


def create_exclusive(path, text) -> bool:
    """Writes ``text`` only if ``path`` does not exist; False if it does.

    Atomic locally (a hard link of a finished temporary file) and on object
    stores that take a create-only precondition (gcsfs: ``ifGenerationMatch=0``,
    so of two hosts exactly one creates the object). TensorFlow's file
    systems (``ram://``, ``BRT_REMOTE_FS=gfile``) have no such call: there it
    is a check, then a write.
    """
    if not is_remote(path):
        p = _local(path)
        tmp = f"{p}.{os.getpid()}.tmp"
        with builtins.open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.link(tmp, p)
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)
    if _use_gfile(path):
        if _gfile().exists(path):
            return False
        write_text(path, text)
        return True
    fs, p = _fs(path)
    try:
        fs.pipe_file(p, text.encode("utf-8"), mode="create")
    except FileExistsError:
        return False
    return True


def append_text(path, text):
    """Appends to a text file (object stores cannot append: read, add, rewrite)."""
    if not is_remote(path):
        with builtins.open(_local(path), "a", encoding="utf-8") as f:
            f.write(text)
        return
    if _use_gfile(path):
        with _gfile().GFile(path, "a") as f:
            f.write(text)
        return
    old = read_text(path) if exists(path) else ""
    write_text(path, old + text)


def remove(path):
    if not is_remote(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(_local(path))
    elif _use_gfile(path):
        if _gfile().exists(path):
            _gfile().remove(path)
    else:
        fs, p = _fs(path)
        if fs.exists(p):
            fs.rm(p)


def rmtree(path):
    """Removes a directory tree; a missing one is not an error."""
    if not is_remote(path):
        shutil.rmtree(_local(path), ignore_errors=True)
    elif _use_gfile(path):
        import tensorflow as tf

        g = _gfile()
        if not g.exists(path):
            return
        for rel in walk_files(path):
            g.remove(posixpath.join(path, rel))
        try:  # the directories; ram:// may list phantom entries (see walk_files)
            g.rmtree(path)
        except tf.errors.NotFoundError:
            pass
    else:
        fs, p = _fs(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)


def walk_files(path) -> list[str]:
    """Paths of all files under a directory, relative to it, sorted."""
    out = []
    if not is_remote(path):
        root = _local(path)
        for d, _, files in os.walk(root):
            out += [os.path.relpath(os.path.join(d, f), root) for f in files]
    elif _use_gfile(path):
        g = _gfile()
        for d, _, files in g.walk(path):
            rel = d[len(path) :].strip("/")
            # ram:// lists "2" inside "ckpt" when "ckpt2" exists: keep real files.
            files = [f for f in files if g.exists(posixpath.join(d, f))]
            out += [posixpath.join(rel, f) if rel else f for f in files]
    else:
        fs, p = _fs(path)
        if fs.exists(p):
            out = [f[len(p) :].strip("/") for f in fs.find(p)]
    return sorted(out)


def size(path) -> int:
    """Total bytes of a file or of all files under a directory."""
    if not isdir(path):
        with open(path, "rb") as f:
            return len(f.read())
    total = 0
    for rel in walk_files(path):
        if not is_remote(path):
            total += os.path.getsize(os.path.join(_local(path), rel))
        else:
            with open(join(path, rel), "rb") as f:
                total += len(f.read())
    return total


def copy_file(src, dst):
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 22)


def copy_tree(src, dst, last=None):
    """Copies every file under ``src`` to ``dst`` (any two kinds of path);
    the file named ``last`` (a commit marker such as a manifest) goes last."""
    makedirs(dst)
    files = walk_files(src)
    if last in files:
        files = [f for f in files if f != last] + [last]
    for rel in files:
        target = join(dst, *rel.split("/"))
        if "/" in rel and (_use_gfile(dst) or not is_remote(dst)):
            makedirs(dirname(target))
        copy_file(join(src, *rel.split("/")), target)


def replace_dir(src, dst):
    """Moves directory ``src`` to ``dst`` (replacing it): a rename locally;
    on object stores a copy then a delete (not atomic: callers write a
    commit marker last and treat a directory without it as incomplete)."""
    if not is_remote(src) and not is_remote(dst):
        shutil.rmtree(_local(dst), ignore_errors=True)
        os.replace(_local(src), _local(dst))
        return
    rmtree(dst)
    copy_tree(src, dst, last="manifest.json")
    rmtree(src)


@contextlib.contextmanager
def staged_dir(path, last=None):
    """A local directory to write into; for a remote ``path`` a temporary one
    whose files are uploaded to ``path`` on success (``last`` last)."""
    if not is_remote(path):
        os.makedirs(_local(path), exist_ok=True)
        yield _local(path)
        return
    with tempfile.TemporaryDirectory(prefix="brt-stage-") as tmp:
        yield tmp
        copy_tree(tmp, path, last=last)


@contextlib.contextmanager
def local_copy(path):
    """A local path with the content of file or directory ``path`` (the path
    itself when it is local, else a temporary download)."""
    if not is_remote(path):
        yield _local(path)
        return
    with tempfile.TemporaryDirectory(prefix="brt-fetch-") as tmp:
        target = os.path.join(tmp, basename(path) or "data")
        if isdir(path):
            copy_tree(path, target)
        else:
            copy_file(path, target)
        yield target


def move(src, dst):
    """Moves a file or directory (a rename locally; copy and delete remotely)."""
    if not is_remote(src) and not is_remote(dst):
        os.replace(_local(src), _local(dst))
    elif isdir(src):
        copy_tree(src, dst)
        rmtree(src)
    else:
        copy_file(src, dst)
        remove(src)


def tf_native(path) -> bool:
    """Whether TensorFlow's own file system should write ``path`` (local,
    ``ram://``, or any URL with ``BRT_REMOTE_FS=gfile``); else write locally
    and copy (e.g. TensorBoard events for ``gs://`` through gcsfs)."""
    return not is_remote(path) or _use_gfile(path)
