"""A small, strict binary codec: length-checked, bounded, no trailing bytes.

Decoding untrusted bytes must never raise anything but `ProtocolError(Rule.ENCODING)`: every read
is bounds-checked and every variable-length field has an upper bound.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from .errors import ProtocolError, Rule

MAX_BYTES = 1 << 31  # largest single field (a masked vector of 2^29 uint32s)
MAX_ITEMS = 1 << 20  # largest list (members, shares)


class Writer:
    """Appends fields to a growing buffer."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> Writer:
        self._parts.append(struct.pack("<B", v))
        return self

    def u16(self, v: int) -> Writer:
        self._parts.append(struct.pack("<H", v))
        return self

    def u32(self, v: int) -> Writer:
        self._parts.append(struct.pack("<I", v))
        return self

    def u64(self, v: int) -> Writer:
        self._parts.append(struct.pack("<Q", v))
        return self

    def f64(self, v: float) -> Writer:
        self._parts.append(struct.pack("<d", v))
        return self

    def fixed(self, data: bytes, size: int) -> Writer:
        if len(data) != size:
            raise ValueError(f"field must be {size} bytes, got {len(data)}")
        self._parts.append(bytes(data))
        return self

    def var(self, data: bytes | memoryview) -> Writer:
        # a byte view, not a copy: getvalue() copies once (a masked vector is 4d bytes);
        # len() of a memoryview counts items, not bytes, hence the cast
        raw = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.u32(raw.nbytes if isinstance(raw, memoryview) else len(raw))
        self._parts.append(raw)
        return self

    def text(self, s: str) -> Writer:
        return self.var(s.encode("utf-8"))

    def ints(self, values: Iterable[int]) -> Writer:
        vals = list(values)
        self.u32(len(vals))
        self._parts.append(struct.pack(f"<{len(vals)}I", *vals))
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads fields from untrusted bytes; any inconsistency is a `Rule.ENCODING` error."""

    def __init__(self, data: bytes | memoryview, what: str = "message") -> None:
        self._buf = memoryview(data)
        self._pos = 0
        self._what = what

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._buf):
            raise ProtocolError(Rule.ENCODING, f"{self._what} is truncated")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self._take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self._take(8))[0])

    def f64(self) -> float:
        return float(struct.unpack("<d", self._take(8))[0])

    def fixed(self, size: int) -> bytes:
        return bytes(self._take(size))

    def var(self, max_len: int = MAX_BYTES) -> bytes:
        return bytes(self.var_view(max_len))

    def var_view(self, max_len: int = MAX_BYTES) -> memoryview:
        n = self.u32()
        if n > max_len:
            raise ProtocolError(Rule.ENCODING, f"{self._what}: field of {n} bytes exceeds {max_len}")
        return self._take(n)

    def text(self, max_len: int = 1024) -> str:
        raw = self.var(max_len)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(Rule.ENCODING, f"{self._what}: text is not UTF-8") from exc

    def ints(self, max_items: int = MAX_ITEMS) -> tuple[int, ...]:
        n = self.u32()
        if n > max_items:
            raise ProtocolError(Rule.ENCODING, f"{self._what}: list of {n} exceeds {max_items}")
        return tuple(struct.unpack(f"<{n}I", self._take(4 * n)))

    def count(self, max_items: int = MAX_ITEMS) -> int:
        n = self.u32()
        if n > max_items:
            raise ProtocolError(Rule.ENCODING, f"{self._what}: list of {n} exceeds {max_items}")
        return n

    def finish(self) -> None:
        if self._pos != len(self._buf):
            extra = len(self._buf) - self._pos
            raise ProtocolError(Rule.ENCODING, f"{self._what} has {extra} unexpected trailing bytes")
