"""`prepare` and extraction against crafted and damaged archives: links and escaping
names, truncated archives, bombs, members too large, a disk that fills, clashing names.
Archives are built here; the only server is on 127.0.0.1."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

from audiocnn.datasets.archive_checks import CorruptArchiveError
from audiocnn.datasets.archives import extract_archive
from audiocnn.errors import DatasetError, UnsafeArchiveError
from audiocnn.testing.audio import audio_bytes
from audiocnn.testing.commands import one_error_line, run_cli
from audiocnn.testing.processes import run_limited

pytestmark = pytest.mark.usefixtures("fast_retries")


# ----------------------------------------------------------------------------- archives
AU = audio_bytes("au", seconds=0.3)


def _tar(path: Path, members: list[tuple], mode: str) -> Path:
    with tarfile.open(path, mode) as tf:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tf.addfile(info, io.BytesIO(value))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = value
                tf.addfile(info)
    return path


def _zip(path: Path, members: list[tuple]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for kind, name, value in members:
            assert kind != "hard", "a zip cannot hold a hard link"
            if kind == "file":
                zf.writestr(name, value)
            else:
                info = zipfile.ZipInfo(name)
                info.external_attr = 0o120777 << 16  # S_IFLNK: how zip carries a symlink
                zf.writestr(info, value)
    return path


def make_archive(folder: Path, fmt: str, members: list[tuple], stem: str = "genres") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "zip":
        return _zip(folder / f"{stem}.zip", members)
    return _tar(folder / f"{stem}.{fmt}", members, "w:gz" if fmt == "tar.gz" else "w")


GOOD = [("file", f"genres/{g}/{g}.0000{i}.au", AU) for g in ("rock", "blues") for i in range(3)]
# The reported attack: each link is harmless by its name, but a later member is written
# through the links made before it, two levels above the data dir.
CHAIN = [
    *GOOD,
    ("sym", "genres/x", ".."),
    ("sym", "genres/x/y", ".."),
    ("sym", "genres/x/y/z", ".."),
    ("sym", "genres/x/y/z/w", ".."),
    ("file", "genres/x/y/z/w/EVIL.txt", b"evil"),
    ("hard", "genres/rock/rock.00009.au", "genres/x/y/z/w/outside.wav"),
]
ATTACKS = {
    "chain": (CHAIN, "genres/x"),
    "symlink-inside": ([*GOOD, ("sym", "genres/rock/alias.au", "rock.00000.au")], "genres/rock/alias.au"),
    "symlink-out": ([*GOOD, ("sym", "genres/out", "../../..")], "genres/out"),
    "hardlink": ([*GOOD, ("hard", "genres/rock/h.au", "genres/rock/rock.00000.au")], "genres/rock/h.au"),
    "dotdot": ([*GOOD, ("file", "genres/../../EVIL.txt", b"evil")], "genres/../../EVIL.txt"),
    "absolute": ([*GOOD, ("file", "/tmp/audiocnn-hardening-EVIL.txt", b"evil")], "/tmp/audiocnn-hardening-EVIL.txt"),
}


def _zip_members(members: list[tuple]) -> list[tuple]:
    return [m for m in members if m[0] != "hard"]


def _no_symlinks(folder: Path) -> list[Path]:
    return [Path(d) / n for d, dirs, files in os.walk(folder) for n in dirs + files if os.path.islink(Path(d) / n)]


# every attack in every format, except a hard link in a zip (the format has none)
CASES = [
    (fmt, attack)
    for fmt in ("tar", "tar.gz", "zip")
    for attack in sorted(ATTACKS)
    if not (fmt == "zip" and attack == "hardlink")
]


@pytest.mark.parametrize("fmt,attack", CASES)
def test_links_and_escaping_names_refuse_the_whole_archive(tmp_path, fmt, attack):
    members, culprit = ATTACKS[attack]
    if fmt == "zip":
        members = _zip_members(members)
    archive = make_archive(tmp_path / "src", fmt, members)
    dest = tmp_path / "top" / "mid" / "raw"
    with pytest.raises(UnsafeArchiveError) as err:
        extract_archive(archive, dest)
    msg = str(err.value)
    assert "\n" not in msg and str(archive) in msg and repr(culprit) in msg and "refusing to extract" in msg
    assert list(dest.rglob("*")) == []  # checked before anything is written
    assert list(tmp_path.rglob("EVIL.txt")) == []
    assert not os.path.exists("/tmp/audiocnn-hardening-EVIL.txt")


def test_extraction_never_writes_through_a_symlink_already_on_disk(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "genres").symlink_to(elsewhere)  # left by an older extraction, or by hand
    archive = make_archive(tmp_path / "src", "tar.gz", GOOD)
    with pytest.raises(UnsafeArchiveError, match="would be written through the symbolic link") as err:
        extract_archive(archive, dest)
    assert str(dest / "genres") in str(err.value)
    assert list(elsewhere.iterdir()) == []


def _attack_layout(tmp_path: Path) -> tuple[Path, Path]:
    """data dir two levels down, and the file the hard link of CHAIN would steal."""
    data = tmp_path / "top" / "mid" / "D"
    data.mkdir(parents=True)
    (tmp_path / "top" / "outside.wav").write_bytes(audio_bytes("wav", seconds=0.3))
    return data, tmp_path / "top"


def _assert_nothing_escaped(tmp_path: Path, data: Path) -> None:
    assert list(tmp_path.rglob("EVIL.txt")) == []
    assert _no_symlinks(data) == []
    assert not (data / "gtzan" / "manifest.jsonl").exists()  # no clip, from outside or not


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip"])
def test_prepare_refuses_the_link_chain_archive(tmp_path, capsys, fmt):
    data, _top = _attack_layout(tmp_path)
    members = CHAIN if fmt != "zip" else _zip_members(CHAIN)
    archive = make_archive(tmp_path / "src", fmt, members)
    code, out, err = run_cli(
        capsys, "--data-dir", str(data), "prepare", "gtzan", "--source", str(archive), "--skip-checksum", "-j", "1"
    )
    line = one_error_line(err)
    assert code != 0 and out == ""
    assert str(archive) in line and "'genres/x' is a symbolic link" in line
    _assert_nothing_escaped(tmp_path, data)


def test_prepare_refuses_the_link_chain_archive_from_a_url(tmp_path, capsys, http_server):
    data, _top = _attack_layout(tmp_path)
    archive = make_archive(tmp_path / "src", "tar.gz", CHAIN)
    base = http_server.add_files("/mirror", {"genres.tar.gz": archive.read_bytes()})
    code, _out, err = run_cli(
        capsys, "--data-dir", str(data), "prepare", "gtzan", "--source", base, "--skip-checksum", "-j", "1"
    )
    line = one_error_line(err)
    assert code != 0 and "genres.tar.gz" in line and "'genres/x' is a symbolic link" in line
    _assert_nothing_escaped(tmp_path, data)


# ----------------------------------------------------------------------------- damaged input
def _cut(archive: Path, keep: float = 0.6) -> Path:
    data = archive.read_bytes()
    archive.write_bytes(data[: int(len(data) * keep)])
    return archive


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip"])
def test_truncated_archive_is_one_line_and_keeps_what_was_extracted(tmp_path, capsys, fmt):
    data = tmp_path / "data"
    good = make_archive(tmp_path / "good", fmt, GOOD)
    code, _out, err = run_cli(
        capsys,
        "--data-dir",
        str(data),
        "prepare",
        "gtzan",
        "--source",
        str(good),
        "--skip-checksum",
        "--split-scheme",
        "random",
        "-j",
        "1",
    )
    assert code == 0, err
    raw = sorted(p for p in (data / "gtzan" / "raw").rglob("*") if p.is_file())
    sizes = [p.stat().st_size for p in raw]
    bad = _cut(make_archive(tmp_path / "bad", fmt, GOOD))
    code, _out, err = run_cli(
        capsys,
        "--data-dir",
        str(data),
        "prepare",
        "gtzan",
        "--source",
        str(bad),
        "--skip-checksum",
        "--split-scheme",
        "random",
        "-j",
        "1",
        "--force",
    )
    line = one_error_line(err)
    assert code == 1 and str(bad) in line and "truncated or corrupt" in line and "fresh copy" in line
    assert bad.is_file()  # the user's file is not deleted
    assert [p.stat().st_size for p in raw] == sizes  # earlier extraction intact


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip"])
@pytest.mark.parametrize("keep", [0.3, 0.55, 0.6, 0.9])
def test_an_archive_cut_anywhere_is_refused_before_writing(tmp_path, fmt, keep):
    bad = _cut(make_archive(tmp_path / "src", fmt, GOOD), keep)
    dest = tmp_path / "out"
    with pytest.raises(CorruptArchiveError, match="truncated or corrupt") as err:
        extract_archive(bad, dest)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert list(dest.rglob("*")) == []


def test_truncated_download_says_to_delete_it_and_keeps_it(tmp_path, capsys, http_server):
    data = tmp_path / "data"
    cut = _cut(make_archive(tmp_path / "src", "tar.gz", GOOD)).read_bytes()
    base = http_server.add_files("/m", {"genres.tar.gz": cut})
    code, _out, err = run_cli(
        capsys, "--data-dir", str(data), "prepare", "gtzan", "--source", base, "--skip-checksum", "-j", "1"
    )
    line = one_error_line(err)
    downloaded = data / "gtzan" / "downloads" / "genres.tar.gz"
    assert code == 1 and "truncated or corrupt" in line
    assert f"delete {downloaded} and run the same command again" in line
    assert downloaded.read_bytes() == cut


def test_not_an_archive_at_all_is_one_line(tmp_path):
    junk = tmp_path / "genres.tar.gz"
    junk.write_bytes(b"<html>mirror error page</html>" * 50)
    with pytest.raises(CorruptArchiveError, match="not a zip or tar archive"):
        extract_archive(junk, tmp_path / "out")


# ----------------------------------------------------------------------------- sizes, bombs, clashes
BOMB = 64 << 20  # decompresses to 64 MiB of zeros from about 64 KiB


def _zeros_zip(path: Path, name: str, size: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for _kind, n, value in GOOD:
            zf.writestr(n, value)
        with zf.open(name, "w", force_zip64=True) as out:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                out.write(block)
    return path


def _zeros_tar_gz(path: Path, name: str, size: int) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for _kind, n, value in GOOD:
            info = tarfile.TarInfo(n)
            info.size = len(value)
            tf.addfile(info, io.BytesIO(value))
        info = tarfile.TarInfo(name)
        info.size = size
        tf.addfile(info, io.BytesIO(bytes(size)))
    return path


EXTRACT = """
import sys
from pathlib import Path
from audiocnn.datasets.archives import extract_archive
from audiocnn.errors import AudiocnnError
dest = Path(sys.argv[2])
try:
    extract_archive(sys.argv[1], dest)
except AudiocnnError as exc:
    print("error:", exc)
print("left:", sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()))
"""


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_an_archive_bomb_is_refused_before_a_byte_is_written(tmp_path, fmt):
    """64 MiB of zeros in a GTZAN-layout archive of ~64 KiB: refused for its ratio (no
    dataset bound involved), nothing written. Run with files capped at 16 MiB, so a
    regression fails here instead of filling the disk."""
    name = "genres/blues/blues.00099.au"
    make = _zeros_zip if fmt == "zip" else _zeros_tar_gz
    archive = make(tmp_path / f"genres.{fmt}", name, BOMB)
    assert archive.stat().st_size < BOMB // 200
    dest = tmp_path / "raw"
    proc = run_limited(EXTRACT, str(archive), str(dest), file_mb=16, timeout=60)
    assert proc.returncode == 0, proc.stderr
    error, left = proc.stdout.splitlines()
    assert error.startswith("error:") and str(archive) in error and repr(name) in error
    assert re.search(r"KiB to 64\.\d MiB, more than 50:1, which no audio compresses to", error), error
    assert "archive bomb" in error
    assert left == "left: []"


def test_prepare_refuses_a_gtzan_zip_bomb_in_one_line(tmp_path):
    """The reported case through the CLI: a 'clip' of zeros far beyond any GTZAN clip is
    refused for GTZAN's sizes (before its ratio is looked at)."""
    archive = _zeros_zip(tmp_path / "genres.zip", "genres/blues/blues.00099.au", BOMB)
    data = tmp_path / "data"
    proc = run_limited(
        "from audiocnn.cli.main import main; main()",
        "--data-dir",
        str(data),
        "prepare",
        "gtzan",
        "--source",
        str(archive),
        "-j",
        "1",
        memory_mb=8192,  # torch is imported on the way; what it maps is address space, not memory
        file_mb=16,
        timeout=120,
    )
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1 and "member 'genres/blues/blues.00099.au' is 64.0 MiB" in line
    assert "more than the 16.0 MiB of the largest file this dataset has" in line
    assert [p for p in (data / "gtzan").rglob("*") if p.is_file() and p.suffix == ".au"] == []


def test_a_member_larger_than_any_file_of_the_dataset_is_refused(tmp_path, capsys, monkeypatch):
    from audiocnn.datasets.gtzan import GTZAN

    monkeypatch.setattr(GTZAN, "max_member_size", 1 << 20)  # the real bound is 16 MiB, for 1.3 MB clips
    big = os.urandom(2 << 20)  # incompressible: no ratio to catch it, only the dataset's sizes
    archive = make_archive(tmp_path / "src", "zip", [*GOOD, ("file", "genres/rock/rock.00007.au", big)])
    data = tmp_path / "data"
    code, _out, err = run_cli(
        capsys, "--data-dir", str(data), "prepare", "gtzan", "--source", str(archive), "--skip-checksum", "-j", "1"
    )
    line = one_error_line(err)
    assert code == 1 and "'genres/rock/rock.00007.au' is 2.0 MiB" in line and "largest file" in line
    assert [p for p in (data / "gtzan").rglob("*.au")] == []


def test_too_little_free_space_is_refused_before_extracting(tmp_path, monkeypatch, capsys):
    archive = make_archive(tmp_path / "src", "tar.gz", GOOD)
    dest = tmp_path / "raw"
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=20 << 10))  # a 20 KiB disk
    with pytest.raises(DatasetError, match=r"needs \d+\.\d KiB, only 20\.0 KiB is free") as err:
        extract_archive(archive, dest)
    assert str(dest) in str(err.value) and "pass `data_dir` on a disk" in str(err.value)
    assert list(dest.rglob("*")) == []
    data = tmp_path / "data"  # the CLI names the flag
    code, _out, err = run_cli(
        capsys, "--data-dir", str(data), "prepare", "gtzan", "--source", str(archive), "--skip-checksum", "-j", "1"
    )
    line = one_error_line(err)
    assert "WARNING: --skip-checksum: genres.tar.gz is NOT verified" in err
    assert code == 1 and "only 20.0 KiB is free" in line and "pass --data-dir on a disk with more room" in line
    assert [p for p in data.rglob("*.au")] == []


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_a_disk_that_fills_during_extraction_leaves_no_partial_file(tmp_path, fmt):
    """Files capped at 1 MiB (EFBIG, as ENOSPC on a full disk) and a 2 MiB member: one line,
    and the member's partial file is gone; the members written before it are whole."""
    members = [*GOOD, ("file", "genres/rock/rock.00007.au", os.urandom(2 << 20))]
    archive = make_archive(tmp_path / "src", fmt, members)
    dest = tmp_path / "raw"
    proc = run_limited(EXTRACT, str(archive), str(dest), file_mb=1, timeout=60)
    assert proc.returncode == 0, proc.stderr
    error, left = proc.stdout.splitlines()
    assert error.startswith("error:") and "rock.00007.au: cannot write" in error and "free space" in error
    assert left == "left: " + repr(sorted(m[1] for m in GOOD))


def test_a_zip_member_longer_than_it_declares_leaves_no_file(tmp_path):
    archive = make_archive(tmp_path / "src", "zip", [("file", "genres/rock/rock.00000.au", os.urandom(4096))])
    data = bytearray(archive.read_bytes())
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 1000)  # directory: 1000 bytes, not 4096
    struct.pack_into("<I", data, 22, 1000)  # local header too
    archive.write_bytes(bytes(data))
    dest = tmp_path / "raw"
    with pytest.raises(CorruptArchiveError, match="rock.00000.au"):
        extract_archive(archive, dest)
    assert [p for p in dest.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_two_members_of_one_name_are_refused(tmp_path, fmt):
    twice = "genres/rock/rock.00000.au"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it writes
        archive = make_archive(tmp_path / "src", fmt, [*GOOD, ("file", twice, b"other bytes")])
    dest = tmp_path / "raw"
    with pytest.raises(UnsafeArchiveError, match="is in the archive twice") as err:
        extract_archive(archive, dest)
    assert repr(twice) in str(err.value) and list(dest.rglob("*")) == []


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_a_file_where_a_member_needs_a_folder_is_named_as_such(tmp_path, fmt):
    members = [("file", "genres/rock", b"a file"), ("file", "genres/rock/rock.00000.au", AU)]
    archive = make_archive(tmp_path / "src", fmt, members)
    dest = tmp_path / "raw"
    with pytest.raises(UnsafeArchiveError, match="need a file and a folder at one path") as err:
        extract_archive(archive, dest)
    assert "'genres/rock'" in str(err.value) and "free space" not in str(err.value)
    assert list(dest.rglob("*")) == []
    # and a file left on disk where the archive needs a folder
    good = make_archive(tmp_path / "good", fmt, GOOD)
    (dest / "genres").mkdir(parents=True)
    (dest / "genres" / "rock").write_bytes(b"left by hand")
    with pytest.raises(DatasetError, match="needs a folder at .*rock, but a file is there") as err:
        extract_archive(good, dest)
    assert "free space" not in str(err.value) and f"delete {dest / 'genres' / 'rock'}" in str(err.value)
