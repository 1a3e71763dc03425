"""The numpy-only TensorFlow tensor-bundle reader, on bundles written here byte by byte."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from audiocnn.errors import CheckpointError
from audiocnn.pretrained.tf_bundle import (
    TABLE_MAGIC,
    TensorBundle,
    crc32c,
    load_bundle,
    mask_crc,
    snappy_decompress,
    unmask_crc,
)

# --------------------------------------------------------------------------- a tiny writer
# Independent of the reader: LevelDB table layout + protobuf wire format as TensorFlow
# writes them (only the CRC function is shared, and that is checked against known vectors).

DT = {
    np.dtype("float32"): 1,
    np.dtype("float64"): 2,
    np.dtype("int32"): 3,
    np.dtype("int64"): 9,
    np.dtype("float16"): 19,
    np.dtype("bool"): 10,
    np.dtype("uint8"): 4,
}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_varint(field: int, v: int) -> bytes:
    return varint(field << 3) + varint(v)


def pb_bytes(field: int, b: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(b)) + b


def pb_fixed32(field: int, v: int) -> bytes:
    return varint(field << 3 | 5) + struct.pack("<I", v)


def entry_proto(arr: np.ndarray, shard: int, offset: int, raw: bytes) -> bytes:
    shape = b"".join(pb_bytes(2, pb_varint(1, d)) for d in arr.shape)
    out = pb_varint(1, DT[arr.dtype]) + pb_bytes(2, shape)
    if shard:
        out += pb_varint(3, shard)
    if offset:
        out += pb_varint(4, offset)
    return out + pb_varint(5, len(raw)) + pb_fixed32(6, mask_crc(crc32c(raw)))


def block(items: list[tuple[bytes, bytes]], restart_interval: int = 3) -> bytes:
    out = bytearray()
    restarts = []
    prev = b""
    for i, (k, v) in enumerate(items):
        if i % restart_interval == 0:
            restarts.append(len(out))
            shared = 0
        else:
            shared = 0
            while shared < min(len(k), len(prev)) and k[shared] == prev[shared]:
                shared += 1
        out += varint(shared) + varint(len(k) - shared) + varint(len(v)) + k[shared:] + v
        prev = k
    if not restarts:
        restarts = [0]
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def snappy_literal(data: bytes) -> bytes:
    out = varint(len(data))
    for i in range(0, len(data), 60):
        chunk = data[i : i + 60]
        out += bytes([(len(chunk) - 1) << 2]) + chunk
    return out


def table(items: list[tuple[bytes, bytes]], per_block: int = 4, snappy: bool = False) -> bytes:
    out = bytearray()

    def put(contents: bytes) -> bytes:
        kind = 0
        if snappy:
            contents, kind = snappy_literal(contents), 1
        handle = varint(len(out)) + varint(len(contents))
        out.extend(contents + bytes([kind]) + struct.pack("<I", mask_crc(crc32c(contents + bytes([kind])))))
        return handle

    index = []
    for i in range(0, len(items), per_block):
        chunk = items[i : i + per_block]
        index.append((chunk[-1][0], put(block(chunk))))
    meta_handle = put(block([]))
    index_handle = put(block(index, restart_interval=1))
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out) + footer


def write_bundle(prefix: Path | str, tensors: dict[str, np.ndarray], num_shards: int = 1, **kw) -> None:
    shards = [bytearray() for _ in range(num_shards)]
    items = [(b"", pb_varint(1, num_shards) + pb_bytes(3, pb_varint(1, 1)))]
    for i, name in enumerate(sorted(tensors)):
        arr = np.array(tensors[name], order="C")
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        s = i % num_shards
        items.append((name.encode(), entry_proto(arr, s, len(shards[s]), raw)))
        shards[s] += raw
    Path(f"{prefix}.index").parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.index").write_bytes(table(items, **kw))
    for s, data in enumerate(shards):
        Path(f"{prefix}.data-{s:05d}-of-{num_shards:05d}").write_bytes(bytes(data))


def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv2d/kernel": rng.standard_normal((7, 38, 1, 4)).astype(np.float32),
        "conv2d/bias": rng.standard_normal(4).astype(np.float32),
        "conv2d_1/kernel": rng.standard_normal((3, 3, 2, 2)).astype(np.float64),
        "dense/kernel": rng.standard_normal((5, 3)).astype(np.float16),
        "global_step": np.array(12345678901, dtype=np.int64),
        "batch_normalization/moving_mean": np.arange(6, dtype=np.int32),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


# --------------------------------------------------------------------------- tests


def test_crc32c_known_vectors() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 test vectors
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"") == 0
    assert unmask_crc(mask_crc(0xDEADBEEF)) == 0xDEADBEEF


@pytest.mark.parametrize("n", [4095, 4096, 100_003, 1 << 20])
def test_crc32c_chunked_equals_bytewise(n: int) -> None:
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    # Bytewise reference: continue from a short prefix so the vectorised path is not used.
    expected = 0
    for i in range(0, n, 4000):
        expected = crc32c(data[i : i + 4000], expected)
    assert crc32c(data) == expected
    assert crc32c(data[:-1]) != expected


@pytest.mark.parametrize("shards", [1, 2])
def test_roundtrip_all_dtypes(tmp_path: Path, shards: int) -> None:
    tensors = sample_tensors()
    write_bundle(tmp_path / "model.ckpt", tensors, num_shards=shards)
    bundle = TensorBundle.open(tmp_path / "model.ckpt")
    assert bundle.header.num_shards == shards
    assert bundle.names() == sorted(tensors)
    for name, arr in tensors.items():
        got = bundle.read(name)
        assert got.dtype == arr.dtype and got.shape == arr.shape, name
        np.testing.assert_array_equal(got, arr)


def test_open_by_index_path_and_by_folder(tmp_path: Path) -> None:
    tensors = {"a/kernel": np.ones((2, 2), np.float32)}
    write_bundle(f"{tmp_path / 'm1'}/", tensors)  # musicnn style: folder/.index
    assert (tmp_path / "m1" / ".index").is_file()
    np.testing.assert_array_equal(load_bundle(tmp_path / "m1")["a/kernel"], tensors["a/kernel"])
    write_bundle(tmp_path / "ck", tensors)
    np.testing.assert_array_equal(TensorBundle.open(tmp_path / "ck.index").read("a/kernel"), tensors["a/kernel"])


def test_snappy_compressed_blocks(tmp_path: Path) -> None:
    tensors = sample_tensors()
    write_bundle(tmp_path / "s", tensors, snappy=True)
    got = load_bundle(tmp_path / "s")
    np.testing.assert_array_equal(got["conv2d/kernel"], tensors["conv2d/kernel"])


def test_snappy_copies_overlap() -> None:
    # "abc" literal, then a 1-byte-offset copy of 9 bytes at distance 3 (overlapping).
    stream = varint(12) + bytes([2 << 2]) + b"abc" + bytes([1 | (9 - 4) << 2, 3])
    assert snappy_decompress(stream) == b"abcabcabcabc"
    # 2-byte-offset copy
    stream = varint(8) + bytes([3 << 2]) + b"wxyz" + bytes([2 | (4 - 1) << 2]) + struct.pack("<H", 4)
    assert snappy_decompress(stream) == b"wxyzwxyz"
    with pytest.raises(CheckpointError, match="offset"):
        snappy_decompress(varint(4) + bytes([1 | 0 << 2, 9]))


def test_corrupted_tensor_bytes_fail_with_file_name(tmp_path: Path) -> None:
    tensors = sample_tensors()
    write_bundle(tmp_path / "m", tensors)
    data = tmp_path / "m.data-00000-of-00001"
    blob = bytearray(data.read_bytes())
    bundle = TensorBundle.open(tmp_path / "m")
    e = bundle.entries["conv2d/kernel"]
    blob[e.offset + 5] ^= 0x40
    data.write_bytes(bytes(blob))
    bundle = TensorBundle.open(tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"m\.data-00000-of-00001.*checksum mismatch.*conv2d/kernel"):
        bundle.read("conv2d/kernel")
    # Other tensors are still readable.
    np.testing.assert_array_equal(bundle.read("conv2d/bias"), tensors["conv2d/bias"])


def test_truncated_data_file(tmp_path: Path) -> None:
    write_bundle(tmp_path / "m", sample_tensors())
    data = tmp_path / "m.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    bundle = TensorBundle.open(tmp_path / "m")
    last = max(bundle.entries.values(), key=lambda e: e.offset + e.size)
    with pytest.raises(CheckpointError, match=r"m\.data-00000-of-00001.*truncated"):
        bundle.read(last.name)


def test_missing_data_file(tmp_path: Path) -> None:
    write_bundle(tmp_path / "m", sample_tensors())
    (tmp_path / "m.data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        TensorBundle.open(tmp_path / "m").read("conv2d/bias")


def test_corrupted_or_truncated_index(tmp_path: Path) -> None:
    write_bundle(tmp_path / "m", sample_tensors())
    index = tmp_path / "m.index"
    good = index.read_bytes()
    bad = bytearray(good)
    bad[10] ^= 0x01  # inside the first data block
    index.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=r"m\.index.*checksum mismatch"):
        TensorBundle.open(tmp_path / "m")
    index.write_bytes(good[:-60])
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint index"):
        TensorBundle.open(tmp_path / "m")
    index.write_bytes(b"short")
    with pytest.raises(CheckpointError, match="too short"):
        TensorBundle.open(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no such checkpoint index"):
        TensorBundle.open(tmp_path / "nothing")


def test_unknown_tensor_name(tmp_path: Path) -> None:
    write_bundle(tmp_path / "m", sample_tensors())
    with pytest.raises(CheckpointError, match="no tensor named 'nope'"):
        TensorBundle.open(tmp_path / "m").read("nope")


def test_reads_musicnn_checkpoint_when_installed() -> None:
    from audiocnn.pretrained.catalog import installed_package_dir

    pkg = installed_package_dir()
    if pkg is None or not (pkg / "MTT_musicnn" / ".index").is_file():
        pytest.skip("musicnn package not installed (pip install --no-deps musicnn==0.1.0)")
    bundle = TensorBundle.open(pkg / "MTT_musicnn")
    assert bundle.entries["conv2d/kernel"].shape == (7, 38, 1, 204)
    assert bundle.entries["conv2d_5/kernel"].shape == (7, 561, 1, 64)
    kernel = bundle.read("dense_1/kernel")  # CRC-checked
    assert kernel.shape == (200, 50) and kernel.dtype == np.float32 and np.isfinite(kernel).all()
