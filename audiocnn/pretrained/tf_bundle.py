"""Read TensorFlow "tensor bundle" checkpoints (``<prefix>.index`` + ``<prefix>.data-*``)
with numpy only, so pretrained TF-1 weights can be used without installing TensorFlow.

Format, as TensorFlow writes it:

* ``.index`` is a LevelDB-style SSTable. Footer (last 48 bytes): the metaindex and index
  block handles (varint offset + varint size each), zero padding, then the magic number
  ``0xdb4775248b80fb57``. Each block is a run of prefix-compressed entries
  (``shared``, ``non_shared``, ``value_len`` varints, key suffix, value), an array of
  uint32 restart offsets and their count, followed by a 5-byte trailer: compression type
  (0 none, 1 snappy) and the masked CRC-32C of the block and type byte. The index block
  maps the last key of every data block to that block's handle.
* Table values are serialized protobufs. Key ``""`` holds a ``BundleHeaderProto``
  (num_shards, endianness, version); every other key is a tensor name whose value is a
  ``BundleEntryProto`` (dtype, shape, shard_id, offset, size, masked crc32c).
* ``.data-SSSSS-of-NNNNN`` shard files hold the raw tensor bytes at ``offset``/``size``.

Every tensor read is checked against its CRC-32C; a mismatch, a truncated file or a
malformed table raises :class:`~audiocnn.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from audiocnn.errors import CheckpointError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto -> numpy (little-endian unless the header says big).
_DTYPES: dict[int, str] = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    8: "complex64",
    9: "int64",
    10: "bool",
    17: "uint16",
    18: "complex128",
    19: "float16",
    22: "uint32",
    23: "uint64",
}
_BFLOAT16 = 14
_DTYPE_NAMES = {7: "string", 14: "bfloat16"}


# --------------------------------------------------------------------------- CRC-32C


def _make_table() -> np.ndarray:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _raw_crc_scalar(crc: int, data: bytes | memoryview) -> int:
    """CRC register update over ``data`` (no init / final xor), one byte at a time."""
    t = _TABLE_LIST
    for b in bytes(data):
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _zeros_operator(nbytes: int) -> list[int]:
    """The linear map 'feed ``nbytes`` zero bytes' on the 32-bit CRC register, as columns."""

    def apply(cols: list[int], v: int) -> int:
        out = 0
        i = 0
        while v:
            if v & 1:
                out ^= cols[i]
            v >>= 1
            i += 1
        return out

    def compose(a: list[int], b: list[int]) -> list[int]:  # a after b
        return [apply(a, col) for col in b]

    one = [_raw_crc_scalar(1 << i, b"\0") for i in range(32)]
    result = [1 << i for i in range(32)]
    power = one
    n = nbytes
    while n:
        if n & 1:
            result = compose(power, result)
        power = compose(power, power)
        n >>= 1
    return result


def _operator_tables(cols: list[int]) -> list[list[int]]:
    """Byte-sliced lookup tables applying a 32x32 GF(2) operator with 4 lookups."""
    tables = []
    for byte in range(4):
        tab = []
        for v in range(256):
            out = 0
            for bit in range(8):
                if v >> bit & 1:
                    out ^= cols[8 * byte + bit]
            tab.append(out)
        tables.append(tab)
    return tables


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc`` (0 for a fresh checksum).

    Large buffers are split into equal chunks whose CRC registers are advanced together with
    numpy (one vectorised table lookup per byte position), then combined with the linear
    'shift by chunk length' operator: fast enough for tens of megabytes without a C module.
    """
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    n = buf.size
    state = (crc ^ 0xFFFFFFFF) & 0xFFFFFFFF
    if n < 4096:
        return _raw_crc_scalar(state, buf.tobytes()) ^ 0xFFFFFFFF
    chunk = max(256, int(np.sqrt(n)))
    n_chunks = n // chunk
    body = buf[: n_chunks * chunk].reshape(n_chunks, chunk)
    regs = np.zeros(n_chunks, dtype=np.uint32)
    for j in range(chunk):
        regs = _TABLE[(regs ^ body[:, j]) & 0xFF] ^ (regs >> np.uint32(8))
    t0, t1, t2, t3 = _operator_tables(_zeros_operator(chunk))
    for r in regs.tolist():
        state = t0[state & 0xFF] ^ t1[state >> 8 & 0xFF] ^ t2[state >> 16 & 0xFF] ^ t3[state >> 24] ^ r
    state = _raw_crc_scalar(state, buf[n_chunks * chunk :].tobytes())
    return state ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB/TF checksum masking (stored CRCs are rotated and offset)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --------------------------------------------------------------------------- wire format


def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError(f"{where}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError(f"{where}: malformed varint")


def _proto_fields(buf: bytes, where: str) -> list[tuple[int, int | bytes]]:
    """Decode one protobuf message into ``(field_number, value)`` pairs.

    Varint and fixed fields give ints, length-delimited fields give bytes.
    """
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
            out.append((field, value))
        elif wire == 1:
            if pos + 8 > len(buf):
                raise CheckpointError(f"{where}: truncated fixed64 field")
            out.append((field, struct.unpack_from("<Q", buf, pos)[0]))
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos, where)
            if pos + length > len(buf):
                raise CheckpointError(f"{where}: truncated length-delimited field")
            out.append((field, bytes(buf[pos : pos + length])))
            pos += length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise CheckpointError(f"{where}: truncated fixed32 field")
            out.append((field, struct.unpack_from("<I", buf, pos)[0]))
            pos += 4
        else:
            raise CheckpointError(f"{where}: unsupported protobuf wire type {wire}")
    return out


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass(frozen=True)
class BundleHeader:
    num_shards: int
    big_endian: bool
    producer: int


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives: ``size`` bytes at ``offset`` in data shard ``shard_id``."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored; None when absent
    sliced: bool

    @property
    def dtype_name(self) -> str:
        return _DTYPES.get(self.dtype) or _DTYPE_NAMES.get(self.dtype) or f"dtype {self.dtype}"


def _parse_header(value: bytes, where: str) -> BundleHeader:
    num_shards, endianness, producer = 1, 0, 0
    for field, v in _proto_fields(value, where):
        if field == 1 and isinstance(v, int):
            num_shards = v
        elif field == 2 and isinstance(v, int):
            endianness = v
        elif field == 3 and isinstance(v, bytes):
            for f2, v2 in _proto_fields(v, where):
                if f2 == 1 and isinstance(v2, int):
                    producer = v2
    if num_shards < 1:
        raise CheckpointError(f"{where}: bundle header says {num_shards} data shards")
    return BundleHeader(num_shards=num_shards, big_endian=endianness == 1, producer=producer)


def _parse_shape(value: bytes, where: str) -> tuple[int, ...]:
    dims: list[int] = []
    for field, v in _proto_fields(value, where):
        if field == 2 and isinstance(v, bytes):
            size = 0
            for f2, v2 in _proto_fields(v, where):
                if f2 == 1 and isinstance(v2, int):
                    size = _signed64(v2)
            dims.append(size)
        elif field == 3 and v:
            raise CheckpointError(f"{where}: tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, value: bytes, where: str) -> BundleEntry:
    dtype, shape, shard, offset, size, crc, sliced = 0, (), 0, 0, 0, None, False
    for field, v in _proto_fields(value, f"{where} (entry {name!r})"):
        if field == 1 and isinstance(v, int):
            dtype = v
        elif field == 2 and isinstance(v, bytes):
            shape = _parse_shape(v, where)
        elif field == 3 and isinstance(v, int):
            shard = v
        elif field == 4 and isinstance(v, int):
            offset = _signed64(v)
        elif field == 5 and isinstance(v, int):
            size = _signed64(v)
        elif field == 6 and isinstance(v, int):
            crc = v
        elif field == 7:
            sliced = True
    return BundleEntry(name, dtype, tuple(shape), shard, offset, size, crc, sliced)


# --------------------------------------------------------------------------- SSTable


def snappy_decompress(data: bytes, where: str = "snappy block") -> bytes:
    """Decode a raw snappy stream (LevelDB compresses table blocks with it)."""
    n, pos = _varint(data, 0, where)
    out = bytearray()
    size = len(data)
    while pos < size:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                if pos + extra > size:
                    raise CheckpointError(f"{where}: truncated snappy literal length")
                length = int.from_bytes(data[pos : pos + extra], "little")
                pos += extra
            length += 1
            if pos + length > size:
                raise CheckpointError(f"{where}: truncated snappy literal")
            out += data[pos : pos + length]
            pos += length
            continue
        if kind == 1:
            if pos + 1 > size:
                raise CheckpointError(f"{where}: truncated snappy copy")
            length = 4 + (tag >> 2 & 7)
            offset = (tag >> 5) << 8 | data[pos]
            pos += 1
        else:
            nb = 2 if kind == 2 else 4
            if pos + nb > size:
                raise CheckpointError(f"{where}: truncated snappy copy")
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + nb], "little")
            pos += nb
        if offset == 0 or offset > len(out):
            raise CheckpointError(f"{where}: bad snappy copy offset {offset}")
        start = len(out) - offset
        for i in range(length):  # copies may overlap their own output
            out.append(out[start + i])
    if len(out) != n:
        raise CheckpointError(f"{where}: snappy stream gives {len(out)} bytes, header says {n}")
    return bytes(out)


def _read_block(table: bytes, offset: int, size: int, where: str) -> bytes:
    end = offset + size + BLOCK_TRAILER_SIZE
    if offset < 0 or end > len(table):
        raise CheckpointError(f"{where}: block at {offset}+{size} runs past the end of the file (truncated?)")
    contents = table[offset : offset + size]
    kind = table[offset + size]
    (stored,) = struct.unpack_from("<I", table, offset + size + 1)
    actual = crc32c(table[offset : offset + size + 1])
    if unmask_crc(stored) != actual:
        raise CheckpointError(f"{where}: checksum mismatch in table block at offset {offset} (corrupt file)")
    if kind == 0:
        return bytes(contents)
    if kind == 1:
        return snappy_decompress(bytes(contents), f"{where}: block at offset {offset}")
    raise CheckpointError(f"{where}: unknown block compression type {kind}")


def _block_entries(block: bytes, where: str) -> Iterable[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CheckpointError(f"{where}: table block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError(f"{where}: bad restart count {num_restarts} in table block")
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = _varint(block, pos, where)
        non_shared, pos = _varint(block, pos, where)
        value_len, pos = _varint(block, pos, where)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise CheckpointError(f"{where}: corrupt table entry at block offset {pos}")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _block_handle(value: bytes, pos: int, where: str) -> tuple[int, int, int]:
    offset, pos = _varint(value, pos, where)
    size, pos = _varint(value, pos, where)
    return offset, size, pos


def read_table(table: bytes, where: str) -> list[tuple[bytes, bytes]]:
    """All ``(key, value)`` pairs of an SSTable held in memory, in key order."""
    if len(table) < FOOTER_SIZE:
        raise CheckpointError(f"{where}: {len(table)} bytes is too short for a checkpoint index")
    footer = table[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
    if magic != TABLE_MAGIC:
        raise CheckpointError(f"{where}: not a TensorFlow checkpoint index (bad table magic number)")
    _, _, pos = _block_handle(footer, 0, where)  # metaindex: unused by TF bundles
    index_off, index_size, _ = _block_handle(footer, pos, where)
    index = _read_block(table, index_off, index_size, where)
    out: list[tuple[bytes, bytes]] = []
    for _, handle in _block_entries(index, where):
        off, size, _ = _block_handle(handle, 0, where)
        out.extend(_block_entries(_read_block(table, off, size, where), where))
    return out


# --------------------------------------------------------------------------- bundle


def data_shard_name(prefix_name: str, shard: int, num_shards: int) -> str:
    """File name of data shard ``shard`` for an index named ``<prefix_name>.index``."""
    return f"{prefix_name}.data-{shard:05d}-of-{num_shards:05d}"


class TensorBundle:
    """A parsed ``.index`` plus access to the tensor bytes of its data shards.

    ``shards`` maps shard id -> the shard's bytes (or a path to the shard file); paths are
    read lazily, once. ``source`` is the name used in error messages.
    """

    def __init__(self, index: bytes, shards: Mapping[int, bytes | Path], source: str) -> None:
        self.source = source
        self.header = BundleHeader(1, False, 0)
        self.entries: dict[str, BundleEntry] = {}
        where = f"{source}.index"
        for key, value in read_table(index, where):
            if key == b"":
                self.header = _parse_header(value, where)
                continue
            name = key.decode("utf-8", errors="replace")
            self.entries[name] = _parse_entry(name, value, where)
        self._shards: dict[int, bytes | Path] = dict(shards)

    @classmethod
    def open(cls, prefix: str | Path) -> TensorBundle:
        """Open ``<prefix>.index`` and its data shards from disk.

        ``prefix`` may also be the ``.index`` path itself or a folder holding a bundle with
        an empty prefix (``folder/.index``), which is how musicnn ships its models.
        """
        p = Path(prefix)
        if p.is_dir():
            index_path = p / ".index"
        elif p.name.endswith(".index"):
            index_path = p
        else:
            index_path = p.with_name(p.name + ".index")
        if not index_path.is_file():
            raise CheckpointError(f"{index_path}: no such checkpoint index file")
        stem = index_path.name[: -len(".index")]
        bundle = cls(index_path.read_bytes(), {}, str(index_path)[: -len(".index")])
        n = bundle.header.num_shards
        bundle._shards = {i: index_path.with_name(data_shard_name(stem, i, n)) for i in range(n)}
        return bundle

    def shard_name(self, shard: int) -> str:
        stored = self._shards.get(shard)
        if isinstance(stored, Path):
            return str(stored)
        return data_shard_name(self.source, shard, self.header.num_shards)

    def _shard_bytes(self, shard: int) -> bytes:
        if shard not in self._shards:
            raise CheckpointError(
                f"{self.shard_name(shard)}: data shard {shard} of {self.header.num_shards} is missing"
            )
        data = self._shards[shard]
        if isinstance(data, Path):
            if not data.is_file():
                raise CheckpointError(f"{data}: checkpoint data file is missing")
            data = data.read_bytes()
            self._shards[shard] = data
        return data

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a numpy array with its stored shape (CRC-checked)."""
        try:
            e = self.entries[name]
        except KeyError:
            raise CheckpointError(f"{self.source}.index: no tensor named {name!r}") from None
        if e.sliced:
            raise CheckpointError(f"{self.source}.index: tensor {name!r} is stored in slices (unsupported)")
        if e.dtype not in _DTYPES and e.dtype != _BFLOAT16:
            raise CheckpointError(f"{self.source}.index: tensor {name!r} has unsupported type {e.dtype_name}")
        where = self.shard_name(e.shard_id)
        data = self._shard_bytes(e.shard_id)
        if e.offset < 0 or e.offset + e.size > len(data):
            raise CheckpointError(
                f"{where}: tensor {name!r} needs bytes {e.offset}..{e.offset + e.size} but the file has "
                f"{len(data)} (truncated download?)"
            )
        raw = memoryview(data)[e.offset : e.offset + e.size]
        if e.crc32c is not None and mask_crc(crc32c(raw)) != e.crc32c:
            raise CheckpointError(f"{where}: checksum mismatch for tensor {name!r} (corrupt file)")
        count = int(np.prod(e.shape)) if e.shape else 1
        if e.dtype == _BFLOAT16:
            bits = np.frombuffer(raw, dtype=">u2" if self.header.big_endian else "<u2")
            arr = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            dt = np.dtype(_DTYPES[e.dtype])
            if self.header.big_endian:
                dt = dt.newbyteorder(">")
            if count * dt.itemsize != e.size:
                raise CheckpointError(
                    f"{self.source}.index: tensor {name!r} of shape {e.shape} ({e.dtype_name}) cannot be {e.size} bytes"
                )
            arr = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="))
        if arr.size != count:
            raise CheckpointError(f"{self.source}.index: tensor {name!r} size does not match its shape {e.shape}")
        return arr.reshape(e.shape).copy()

    def read_all(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        return {n: self.read(n) for n in (self.names() if names is None else names)}


def load_bundle(prefix: str | Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read tensors (all, or ``names``) of the TF checkpoint at ``prefix``."""
    return TensorBundle.open(prefix).read_all(names)
