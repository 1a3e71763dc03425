"""Hardening of `prepare`: crafted archives, damaged archives and CSVs, a read-only data
dir, two prepares at once, splits too thin to train on, and a --name reused for another
folder. Archives and folders are built here; the only server is on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import pytest
from dataset_fixtures import (  # noqa: F401 (http_server is a fixture)
    audio_bytes,
    http_server,
    no_slow_retries,
    run_cli,
    run_limited,
)

from audiocnn.datasets.archive_checks import CorruptArchiveError
from audiocnn.datasets.archives import extract_archive
from audiocnn.datasets.lock import _try_flock, lock_path
from audiocnn.errors import DatasetError, UnsafeArchiveError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    no_slow_retries(monkeypatch, retries=0)


def _prepare_folder(capsys, data: Path, src: Path, *extra: str) -> tuple[int, str, str]:
    """``audiocnn --data-dir DATA prepare folder --source SRC --name m -j 1 EXTRA...``."""
    return run_cli(
        capsys, "--data-dir", str(data), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1", *extra
    )


def _one_error_line(err: str) -> str:
    """The single `error:` line of a failed command; no traceback, no click 'Aborted!'."""
    assert "Traceback" not in err and "Aborted!" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


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
    line = _one_error_line(err)
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
    line = _one_error_line(err)
    assert code != 0 and "genres.tar.gz" in line and "'genres/x' is a symbolic link" in line
    _assert_nothing_escaped(tmp_path, data)


# ----------------------------------------------------------------------------- folder links
def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for label, n in counts.items():
        for i in range(n):
            p = root / label / f"take{i}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(audio_bytes("wav", seconds=0.3, seed=i))
    return root


@pytest.mark.parametrize("mode", ["subfolders", "csv"])
def test_folder_link_out_of_the_source_is_refused_in_both_modes(tmp_path, capsys, mode):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    outside = tmp_path / "private" / "secret.wav"
    outside.parent.mkdir()
    outside.write_bytes(audio_bytes("wav", seconds=0.3))
    (src / "calm" / "linked.wav").symlink_to(outside)
    stash = src / ".stash" / "kept.wav"  # hidden: not a clip of its own in either mode
    stash.parent.mkdir()
    stash.write_bytes(audio_bytes("wav", seconds=0.3))
    (src / "loud" / "inner.wav").symlink_to(stash)  # a link that stays inside: fine
    args = ["--data-dir", str(tmp_path / "data"), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1"]
    if mode == "csv":
        rows = ["path,labels"] + [
            f"{p.relative_to(src).as_posix()},{p.parent.name}"
            for p in sorted(src.glob("*/*.wav"))
            if p.parent != stash.parent
        ]
        (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
        args += ["--labels", str(tmp_path / "labels.csv")]
    code, _out, err = run_cli(capsys, *args)
    line = _one_error_line(err)
    assert code == 1 and "calm/linked.wav is outside the source folder" in line and str(outside) in line

    (src / "calm" / "linked.wav").unlink()
    if mode == "csv":
        lines = (tmp_path / "labels.csv").read_text().splitlines()
        (tmp_path / "labels.csv").write_text("\n".join(x for x in lines if "linked" not in x) + "\n")
    code, _out, err = run_cli(capsys, *args)
    assert code == 0, err


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
    line = _one_error_line(err)
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
    line = _one_error_line(err)
    downloaded = data / "gtzan" / "downloads" / "genres.tar.gz"
    assert code == 1 and "truncated or corrupt" in line
    assert f"delete {downloaded} and run the same command again" in line
    assert downloaded.read_bytes() == cut


def test_not_an_archive_at_all_is_one_line(tmp_path):
    junk = tmp_path / "genres.tar.gz"
    junk.write_bytes(b"<html>mirror error page</html>" * 50)
    with pytest.raises(CorruptArchiveError, match="not a zip or tar archive"):
        extract_archive(junk, tmp_path / "out")


def _labels_csv(src: Path, path: Path, encoding: str, bom: bytes = b"") -> Path:
    rows = ["path,labels"] + [
        f"{p.relative_to(src).as_posix()},{p.parent.name};café" for p in sorted(src.rglob("*.wav"))
    ]
    path.write_bytes(bom + ("\n".join(rows) + "\n").encode(encoding))
    return path


def test_labels_csv_in_latin1_names_line_and_byte(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    csv_path = _labels_csv(src, tmp_path / "labels.csv", "latin-1")
    first_bad = csv_path.read_bytes().index(b"\xe9")
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src, "--labels", str(csv_path))
    line = _one_error_line(err)
    assert code == 1
    assert f"{csv_path}:2: not UTF-8 (byte 0xe9 at byte offset {first_bad}); save the file as UTF-8" in line


@pytest.mark.parametrize(
    "encoding,bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff")]
)
def test_labels_csv_utf8_bom_and_utf16_with_bom_are_read(tmp_path, capsys, encoding, bom):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    csv_path = _labels_csv(src, tmp_path / "labels.csv", encoding, bom)
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src, "--labels", str(csv_path), "--format", "json")
    assert code == 0, err
    from audiocnn.datasets import read_manifest

    assert read_manifest(tmp_path / "data" / "m").labels == ["café", "calm", "loud"]


def test_labels_csv_utf16_without_bom_is_refused(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    csv_path = _labels_csv(src, tmp_path / "labels.csv", "utf-16-le")
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src, "--labels", str(csv_path))
    assert code == 1 and "save the file as UTF-8" in _one_error_line(err)


# ----------------------------------------------------------------------------- read-only data dir
_RO_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97; shift; exec "$@"'


def _run_read_only(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    """The CLI with ``folder`` read-only: mode 0555 for a normal user; for root (who writes
    anywhere) a read-only bind mount in a private mount namespace, seen by nobody else."""
    cmd = [sys.executable, "-m", "audiocnn.cli.main", *args]
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
        finally:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a folder read-only")
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _RO_MOUNT, "sh", str(folder), *cmd],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    if res.returncode == 97 or "unshare failed" in res.stderr:
        pytest.skip(f"cannot make a read-only mount here: {res.stderr.strip()}")
    return res


def test_read_only_data_dir_is_one_line_and_a_prepared_copy_still_answers(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    data = tmp_path / "data"
    data.mkdir()
    args = ["--data-dir", str(data), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1"]
    res = _run_read_only(data, args)
    line = _one_error_line(res.stderr)
    assert res.returncode == 1 and line.startswith(f"error: {data}: not writable") and "--data-dir" in line

    assert run_cli(capsys, *args)[0] == 0  # prepared where it is writable ...
    res = _run_read_only(data, args)  # ... then read-only: asking again is still a no-op
    assert res.returncode == 0 and "nothing to do" in res.stderr, res.stderr


# ----------------------------------------------------------------------------- one prepare at a time
HOLDER = """
import sys, time
from pathlib import Path
from audiocnn.datasets.lock import prepare_lock
with prepare_lock(Path(sys.argv[1]), "m"):
    print("locked", flush=True)
    time.sleep(120)
"""

FORKER = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from audiocnn.datasets.lock import prepare_lock
with prepare_lock(Path(sys.argv[1]), "m"):
    if sys.argv[2] == "pool":  # the probe pool of `prepare -j N` (fork on Linux)
        pool = ProcessPoolExecutor(max_workers=1)
        child = pool.submit(os.getpid).result()
    else:
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
    print(child, flush=True)
    os._exit(0)  # the parent dies without cleaning up; its worker lives on
"""

RAW_FLOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, (sys.argv[2] + "\\n").encode())
print("locked", flush=True)
time.sleep(120)
"""


def _python(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, cwd=REPO)


def _stop(proc_or_pid) -> None:
    if isinstance(proc_or_pid, int):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc_or_pid, signal.SIGKILL)
        return
    proc_or_pid.kill()
    proc_or_pid.wait(10)


def test_second_prepare_is_refused_naming_the_holder_and_a_dead_holder_does_not_block(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    data = tmp_path / "data"
    holder = _python(HOLDER, str(data / "m" / ".state"))
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["--data-dir", str(data), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1"]
        code, _out, err = run_cli(capsys, *args)
        line = _one_error_line(err)
        assert code == 1 and line.startswith("error: m: another `audiocnn prepare`") and f"PID {holder.pid}" in line
        assert not (data / "m" / "manifest.jsonl").exists()
    finally:
        _stop(holder)  # SIGKILL: the kernel drops its lock
    code, _out, err = run_cli(capsys, *args)
    assert code == 0, err


@pytest.mark.parametrize("how", ["fork", "pool"])
def test_a_forked_child_does_not_keep_the_lock_of_a_dead_parent(tmp_path, how):
    state = tmp_path / "data" / "m" / ".state"
    forker = _python(FORKER, str(state), how)
    child = int(forker.stdout.readline())
    forker.wait(10)
    try:
        os.kill(child, 0)  # the orphan is alive ...
        # ... and holds nothing: it drops its copy of the lock right after the fork (a few ms,
        # longer on a busy machine), so probe for up to a second
        fd = None
        for _ in range(50):
            fd = _try_flock(lock_path(state))
            if fd is not None:
                break
            time.sleep(0.02)
        assert fd is not None, "the forked child still holds the prepare lock"
        os.close(fd)
    finally:
        _stop(child)


def test_a_lock_held_for_a_dead_pid_is_taken_over(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    data = tmp_path / "data"
    (data / "m" / ".state").mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = _python(RAW_FLOCK, str(lock_path(data / "m" / ".state")), gone.stdout.strip())
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _out, err = run_cli(
            capsys, "--data-dir", str(data), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1"
        )
        assert code == 0, err
        assert f"lock of PID {gone.stdout.strip()}, which has exited" in err and "taking it over" in err
    finally:
        _stop(holder)


# ----------------------------------------------------------------------------- thin splits
def test_one_clip_per_label_warns_that_valid_and_test_are_empty(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 1, "loud": 1, "spoken": 1})
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src)
    assert code == 0, err
    assert (
        "WARNING: m: the valid and test splits are empty (train 3, valid 0, test 0): training cannot "
        "choose its best epoch and evaluation has nothing to score (ROC-AUC undefined)"
    ) in err


def test_a_single_label_warns_that_nothing_can_be_learned(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 4})
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src)
    assert code == 0, err
    assert "WARNING: m: every clip has the one label 'calm': a model learns nothing and ROC-AUC is undefined" in err


def test_a_label_missing_from_a_split_warns_about_its_auc(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 4, "loud": 2})
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src)
    assert code == 0, err
    assert "WARNING: m: ROC-AUC is undefined on the valid split for 2 of 2 labels" in err


def test_enough_clips_give_no_split_warning(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src)
    assert code == 0 and "WARNING" not in err, err


# ----------------------------------------------------------------------------- --name reused
def test_same_name_from_another_source_needs_force(tmp_path, capsys):
    a = make_folder(tmp_path / "a", {"calm": 3, "loud": 3})
    b = make_folder(tmp_path / "b", {"x": 3, "y": 3})
    base = ["--data-dir", str(tmp_path / "data"), "prepare", "folder", "--name", "m", "-j", "1"]
    assert run_cli(capsys, *base, "--source", str(a))[0] == 0
    code, _out, err = run_cli(capsys, *base, "--source", str(b))
    line = _one_error_line(err)
    assert code == 2 and str(a.resolve()) in line and str(b.resolve()) in line and "--force" in line
    from audiocnn.datasets import read_manifest

    assert read_manifest(tmp_path / "data" / "m").labels == ["calm", "loud"]  # untouched
    code, _out, err = run_cli(capsys, *base, "--source", str(a))
    assert code == 0 and "nothing to do (use --force to prepare it again)" in err  # a log line in flags
    assert run_cli(capsys, *base, "--source", str(b), "--force")[0] == 0
    assert read_manifest(tmp_path / "data" / "m").labels == ["x", "y"]


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
    line = _one_error_line(proc.stderr)
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
    line = _one_error_line(err)
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
    line = _one_error_line(err)
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
