"""A small reader for R's lazy-load data files (``data/Rdata.rdx`` + ``Rdata.rdb``).

R packages installed from Debian keep their datasets in a lazy-load database: ``Rdata.rdx`` is a
gzip file holding an R XDR serialisation of a list whose ``variables`` entry maps each dataset
name to an (offset, length) pair into ``Rdata.rdb``; each ``.rdb`` record is a 4-byte big-endian
uncompressed length followed by a zlib stream holding another XDR serialisation.

Only the object types that text datasets use are supported: NULL, symbols, pairlists (attributes),
character / logical / integer / double vectors and generic lists (data frames are lists). Anything
else raises ``ValueError``. No R installation is needed.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

_NILVALUE = 254
_REF = 255
_SPECIAL_ENVS = {
    242,
    250,
    251,
    252,
    253,
}  # empty/base/missing/unbound/global: no payload
_SYMSXP, _LISTSXP, _CHARSXP = 1, 2, 9
_LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP, _EXPRSXP = 10, 13, 14, 16, 19, 20
_HAS_ATTR, _HAS_TAG = 1 << 9, 1 << 10


class RObject:
    """An R vector with its attributes (``names``, ``class``, ...)."""

    def __init__(self, rtype: int, value, attributes: dict | None = None):
        self.rtype = rtype
        self.value = value
        self.attributes = attributes or {}

    def names(self):
        names = self.attributes.get("names")
        return names.value if isinstance(names, RObject) else None

    def __repr__(self):
        return f"RObject(type={self.rtype}, len={len(self.value)}, attrs={list(self.attributes)})"


class _Reader:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0
        self.refs: list = []

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return v

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector: two int32 halves
            hi, lo = self._int(), self._int()
            n = (hi << 32) + lo
        return n

    def read_header(self):
        if self.buf[:2] != b"X\n":
            raise ValueError("not an R XDR serialisation (expected header 'X\\n')")
        self.pos = 2
        version = self._int()
        self._int()  # writer version
        self._int()  # minimal reader version
        if version == 3:
            n = self._int()
            self.pos += n  # native encoding name
        elif version != 2:
            raise ValueError(f"unsupported R serialisation version {version}")

    def _charsxp(self, flags: int):
        n = self._int()
        if n == -1:
            return None
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def read_item(self):
        flags = self._int()
        rtype = flags & 0xFF
        if rtype == _NILVALUE or rtype in _SPECIAL_ENVS:
            return None
        if rtype == _REF:
            index = flags >> 8
            if index == 0:
                index = self._int()
            return self.refs[index - 1]
        if rtype == _SYMSXP:
            name = self.read_item()  # a CHARSXP
            self.refs.append(name)
            return name
        if rtype == _CHARSXP:
            return self._charsxp(flags)
        if rtype == _LISTSXP:
            return self._pairlist(flags)
        if rtype in (_LGLSXP, _INTSXP):
            n = self._length()
            value = list(struct.unpack_from(f">{n}i", self.buf, self.pos))
            self.pos += 4 * n
        elif rtype == _REALSXP:
            n = self._length()
            value = list(struct.unpack_from(f">{n}d", self.buf, self.pos))
            self.pos += 8 * n
        elif rtype == _STRSXP or rtype in (_VECSXP, _EXPRSXP):
            n = self._length()
            value = [self.read_item() for _ in range(n)]
        else:
            raise ValueError(
                f"unsupported R object type {rtype} at byte {self.pos - 4}"
            )
        attributes = self._attributes() if flags & _HAS_ATTR else {}
        return RObject(rtype, value, attributes)

    def _attributes(self) -> dict:
        pairs = self.read_item()
        return dict(pairs) if pairs else {}

    def _pairlist(self, flags: int):
        """Reads a pairlist as a list of (tag, value); iterative along the CDR chain."""
        out = []
        while True:
            if flags & _HAS_ATTR:
                self._attributes()
            tag = self.read_item() if flags & _HAS_TAG else None
            out.append((tag, self.read_item()))
            flags = self._int()
            if flags & 0xFF == _NILVALUE:
                return out
            if flags & 0xFF != _LISTSXP:
                raise ValueError("malformed pairlist")


def unserialize(buf: bytes):
    reader = _Reader(buf)
    reader.read_header()
    return reader.read_item()


def read_lazyload_db(data_dir: str) -> dict:
    """Returns {dataset name: RObject} for ``data_dir/Rdata.rdx`` + ``data_dir/Rdata.rdb``."""
    with gzip.open(os.path.join(data_dir, "Rdata.rdx"), "rb") as f:
        index = unserialize(f.read())
    entries = dict(zip(index.names(), index.value))
    variables = entries["variables"]
    out = {}
    with open(os.path.join(data_dir, "Rdata.rdb"), "rb") as f:
        for name, loc in zip(variables.names(), variables.value):
            offset, length = int(loc.value[0]), int(loc.value[1])
            f.seek(offset)
            record = f.read(length)
            (size,) = struct.unpack(">I", record[:4])
            payload = zlib.decompress(record[4:])
            if len(payload) != size:
                raise ValueError(f"{name}: bad record length {len(payload)} != {size}")
            out[name] = unserialize(payload)
    return out
