"""Download machinery against a real HTTP server on 127.0.0.1, and safe extraction."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import socket
import tarfile
import time
import zipfile

import pytest

from audiocnn.datasets.archives import extract_archive, extract_once
from audiocnn.datasets.checksums import file_digest, verify_file
from audiocnn.datasets.http import download_file
from audiocnn.datasets.parts import MultiPartFile
from audiocnn.errors import ChecksumError, DownloadError, UnsafeArchiveError, UsageError
from audiocnn.testing.archives import split_bytes, tar_gz, zip_bytes

DATA = bytes(range(256)) * 4096  # 1 MiB, not compressible to nothing
MD5 = hashlib.md5(DATA).hexdigest()


def _dl(url, dest, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("sleep", lambda s: None)
    return download_file(url, dest, **kw)


def test_download_verifies_and_renames_atomically(http_server, tmp_path):
    url = http_server.add("/f.bin", DATA)
    out = _dl(url, tmp_path / "f.bin", checksum=MD5, algorithm="md5")
    assert out.read_bytes() == DATA
    assert not (tmp_path / "f.bin.part").exists()
    # A second call trusts the finished file after checking it, without a request.
    n = len(http_server.requests)
    _dl(url, tmp_path / "f.bin", checksum=MD5)
    assert len(http_server.requests) == n


def test_dropped_connection_resumes_without_refetching(http_server, tmp_path):
    url = http_server.add("/drop.bin", DATA, mode="drop-once")
    out = _dl(url, tmp_path / "drop.bin", checksum=hashlib.sha256(DATA).hexdigest(), algorithm="sha256")
    assert out.read_bytes() == DATA
    reqs = [r for r in http_server.requests if r["path"] == "/drop.bin"]
    assert len(reqs) == 2
    first, second = reqs
    assert first["range"] is None and 0 < first["sent"] < len(DATA)
    assert second["range"] == f"bytes={first['sent']}-" and second["status"] == 206
    # every byte crossed the wire exactly once
    assert http_server.bytes_served("/drop.bin") == len(DATA)


def test_resume_from_a_previous_run_part_file(http_server, tmp_path):
    url = http_server.add("/big.bin", DATA)
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(DATA[:300_000])
    _dl(url, dest, checksum=MD5)
    assert dest.read_bytes() == DATA
    assert http_server.bytes_served("/big.bin") == len(DATA) - 300_000


def test_server_ignoring_range_restarts_cleanly(http_server, tmp_path):
    url = http_server.add("/norange.bin", DATA, mode="ignore-range")
    dest = tmp_path / "norange.bin"
    (tmp_path / "norange.bin.part").write_bytes(b"x" * 5000)  # would corrupt the file if appended to
    _dl(url, dest, checksum=MD5)
    assert dest.read_bytes() == DATA
    assert http_server.requests[-1]["status"] == 200


def test_416_on_a_complete_part_finishes_without_refetch(http_server, tmp_path):
    url = http_server.add("/done.bin", DATA)
    dest = tmp_path / "done.bin"
    (tmp_path / "done.bin.part").write_bytes(DATA)
    _dl(url, dest, checksum=MD5)
    assert dest.read_bytes() == DATA
    assert http_server.requests[-1]["status"] == 416
    assert http_server.bytes_served("/done.bin") == 0


def test_checksum_mismatch_names_file_and_both_digests(http_server, tmp_path):
    url = http_server.add("/wrong.bin", DATA)
    expected = "0" * 32
    with pytest.raises(ChecksumError) as err:
        _dl(url, tmp_path / "wrong.bin", checksum=expected, algorithm="md5")
    msg = str(err.value)
    assert "wrong.bin" in msg and expected in msg and MD5 in msg
    assert not (tmp_path / "wrong.bin").exists()
    assert not (tmp_path / "wrong.bin.part").exists()  # a re-run starts clean


def test_skip_checksum_warns_loudly(http_server, tmp_path, caplog):
    url = http_server.add("/skip.bin", DATA)
    with caplog.at_level(logging.WARNING, logger="audiocnn.datasets"):
        out = _dl(url, tmp_path / "skip.bin", checksum="0" * 32, skip_checksum=True)
    assert out.read_bytes() == DATA
    assert "NOT verified" in caplog.text


def test_http_404_fails_without_retrying(http_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        _dl(http_server.base_url + "/nothing.bin", tmp_path / "n.bin", retries=3)
    assert len(http_server.requests) == 1


def test_unreachable_host_retries_then_fails(tmp_path):
    delays = []
    with pytest.raises(DownloadError, match="after 3 attempts"):
        download_file(
            "http://127.0.0.1:9/x.bin",
            tmp_path / "x.bin",
            retries=2,
            backoff=0.01,
            sleep=delays.append,
            progress=False,
            timeout=2,
        )
    assert delays == [0.01, 0.02]


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_file_digest(tmp_path, algorithm):
    p = tmp_path / "d.bin"
    p.write_bytes(DATA)
    assert file_digest(p, algorithm) == hashlib.new(algorithm, DATA).hexdigest()
    verify_file(p, hashlib.new(algorithm, DATA).hexdigest(), algorithm)
    with pytest.raises(ChecksumError):
        verify_file(p, "f" * len(hashlib.new(algorithm).hexdigest()), algorithm)


# ----------------------------------------------------------------------------- extraction


def _tar_with(tmp_path, add) -> str:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("fine/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        add(tf)
    return str(path)


def _file(tf, name, data=b"pwned"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _link(tf, name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tf.addfile(info)


@pytest.mark.parametrize(
    "add",
    [
        lambda tf: _file(tf, "../escaped.txt"),
        lambda tf: _file(tf, "fine/../../escaped.txt"),
        lambda tf: _file(tf, "/tmp/audiocnn-absolute-escape.txt"),
        lambda tf: _link(tf, "fine/link", "../../outside"),
        lambda tf: _link(tf, "fine/abs", "/etc/passwd"),
        lambda tf: _link(tf, "fine/hard", "../outside", kind=tarfile.LNKTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-escape", "symlink-absolute", "hardlink-escape"],
)
def test_unsafe_tar_is_rejected_and_nothing_written(tmp_path, add):
    archive = _tar_with(tmp_path, add)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        extract_archive(archive, dest)
    assert not (tmp_path / "escaped.txt").exists()
    assert not os.path.exists("/tmp/audiocnn-absolute-escape.txt")
    assert list(dest.rglob("*")) == []  # checked before anything is written


def test_internal_symlink_is_refused_too(tmp_path):
    # No dataset ships a link, and a later member could write through one: all are refused.
    archive = _tar_with(tmp_path, lambda tf: _link(tf, "fine/alias.txt", "ok.txt"))
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="is a symbolic link"):
        extract_archive(archive, dest)
    assert list(dest.rglob("*")) == []


@pytest.mark.parametrize("name", ["../escaped.txt", "/abs/escaped.txt", "a/../../escaped.txt", "..\\escaped.txt"])
def test_unsafe_zip_is_rejected(tmp_path, name):
    path = tmp_path / "evil.zip"
    path.write_bytes(zip_bytes({"ok.txt": b"ok", name: b"pwned"}))
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError):
        extract_archive(path, dest)
    assert not (tmp_path / "escaped.txt").exists()
    assert list(dest.rglob("*")) == []


def test_zip_symlink_escape_is_rejected(tmp_path):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("sub/link")
        info.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(info, "../../outside")
    with pytest.raises(UnsafeArchiveError, match="is a symbolic link"):
        extract_archive(path, tmp_path / "out")


def test_multipart_zip_is_read_as_one_stream(tmp_path):
    files = {f"{d}/clip{d}.bin": os.urandom(50_000) for d in "0123456789abcdef"}
    data = zip_bytes(files)
    parts = []
    for i, chunk in enumerate(split_bytes(data, 3), 1):
        p = tmp_path / f"mp3.zip.{i:03d}"
        p.write_bytes(chunk)
        parts.append(p)
    with MultiPartFile(parts) as mp:
        assert mp.seek(0, io.SEEK_END) == len(data)
        mp.seek(len(parts[0].read_bytes()) - 3)
        assert mp.read(6) == data[len(parts[0].read_bytes()) - 3 :][:6]  # across a part boundary
    dest = tmp_path / "out"
    assert extract_archive(parts, dest) == len(files)
    for name, content in files.items():
        assert (dest / name).read_bytes() == content


def test_extract_once_marker_redoes_only_unfinished_work(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz({"d/x.txt": b"x", "d/y.txt": b"y"}))
    dest, state = tmp_path / "raw", tmp_path / ".state"
    assert extract_once([archive], dest, state, key="extract-a") is True
    (dest / "d" / "x.txt").unlink()
    assert extract_once([archive], dest, state, key="extract-a") is False  # finished: not redone
    # an interrupted extraction leaves no marker: it is redone
    (state / "extract-a.done").unlink()
    assert extract_once([archive], dest, state, key="extract-a") is True
    assert (dest / "d" / "x.txt").read_bytes() == b"x"


# ----------------------------------------------------------------------------- failing fast, or visibly
def test_a_host_name_that_does_not_resolve_is_not_retried(tmp_path, monkeypatch):
    calls = []

    def no_dns(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(DownloadError, match="the host name mirror.invalid cannot be resolved") as err:
        _dl("http://mirror.invalid/genres.tar.gz", tmp_path / "g.tar.gz", retries=5)
    assert calls == ["mirror.invalid"] and "online" in str(err.value)


def test_a_redirect_loop_is_one_plain_line(http_server, tmp_path):
    url = http_server.add("/loop.bin", b"", mode="redirect-loop")
    with pytest.raises(DownloadError, match="redirects in a loop or too many times") as err:
        _dl(url, tmp_path / "loop.bin", retries=3)
    assert "\n" not in str(err.value) and url in str(err.value)
    assert len(http_server.requests) <= 11  # urllib's own redirect limit, then no retries


def test_a_stalled_server_is_reported_and_gives_up_after_the_set_timeout(http_server, tmp_path, monkeypatch, caplog):
    from audiocnn.datasets import http

    monkeypatch.setattr(http, "STALL_REPORT", 0.2)
    monkeypatch.setenv("AUDIOCNN_DOWNLOAD_TIMEOUT", "0.5")
    monkeypatch.setenv("AUDIOCNN_DOWNLOAD_RETRIES", "1")
    url = http_server.add("/slow.bin", DATA, mode="stall")
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="audiocnn.datasets"), pytest.raises(DownloadError) as err:
        download_file(url, tmp_path / "slow.bin", progress=False, backoff=0.0)
    took = time.monotonic() - start
    assert took < 6, took  # two 0.5-s timeouts (~1.2 s), not the server's 3-s silences (or 60 s each)
    assert "after 2 attempts (TimeoutError" in str(err.value) and "AUDIOCNN_DOWNLOAD_TIMEOUT" in str(err.value)
    stalls = [r.getMessage() for r in caplog.records if "no data for" in r.getMessage()]
    assert len(stalls) >= 2 and url in stalls[0]  # at least one line in each attempt's silence
    assert re.search(r"no data for 0\.\d s \(giving up on this attempt after 0\.5 s", stalls[0]), stalls[0]
    assert any("retry 1/1" in r.getMessage() for r in caplog.records)
    assert 0 < (tmp_path / "slow.bin.part").stat().st_size < len(DATA)  # kept to resume from


@pytest.mark.parametrize("value", ["soon", "-1", "0"])
def test_a_bad_download_setting_is_one_line(monkeypatch, tmp_path, value):
    monkeypatch.setenv("AUDIOCNN_DOWNLOAD_TIMEOUT", value)
    with pytest.raises(UsageError, match=f"AUDIOCNN_DOWNLOAD_TIMEOUT={value!r}: expected a number of seconds above 0"):
        download_file("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", progress=False)
