"""--max-clips: part of a dataset, fetched member by member from zips with HTTP Range (FMA,
MTAT's three-part zip), every member checked by the CRC-32 of the zip's directory; the
bytes the fixture server sends are counted. GTZAN cannot be cut and says so."""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter

import pytest

from audiocnn.cli.main import run
from audiocnn.datasets import prepare_dataset, read_manifest, remotezip, verify_dataset
from audiocnn.datasets.archive_checks import CorruptArchiveError
from audiocnn.datasets.splits import proportional_subset
from audiocnn.errors import DownloadError
from audiocnn.testing.archives import write_files
from audiocnn.testing.commands import run_cli
from audiocnn.testing.datasets import fma_fixture, mtat_fixture, no_slow_retries, patch_remotes


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    no_slow_retries(monkeypatch)


@pytest.fixture(scope="module")
def big_fma():
    """fma_small.zip with 3,225 tracks (~32 MiB), so 200 clips are a small part of it."""
    return fma_fixture(extra_per_genre=400)


@pytest.mark.usefixtures("one_torch_thread")
def test_fma_small_200_clips_fetch_under_a_tenth_of_the_zip_and_train(
    big_fma, http_server, data_dir, monkeypatch, capsys, tmp_path
):
    patch_remotes(monkeypatch, "fma-small", big_fma.files)
    base = http_server.add_files("/fma", big_fma.files)
    zip_size = len(big_fma.files["fma_small.zip"])

    code, out, err = run_cli(
        capsys, "--data-dir", str(data_dir), "prepare", "fma-small", "--source", base, "--max-clips", "200", "-j", "1"
    )
    assert code == 0 and "partial:" in out and "--max-clips 200" in out
    assert "listed clips chosen (--max-clips 200)" in err  # the library's log line, in flags
    sent = http_server.bytes_served("/fma/fma_small.zip")
    assert sent < 0.10 * zip_size, f"{sent} of {zip_size} bytes"
    assert all(r["range"] for r in http_server.requests if r["path"] == "/fma/fma_small.zip")
    m = read_manifest(data_dir / "fma-small")
    # 200 chosen; 140000 is listed but not in the zip (excluded as such), 99134 is a known empty clip
    assert len(m.clips) == 199 and [e["id"] for e in m.excluded] == ["140000"]
    part = m.extra["partial"]
    assert part["max_clips"] == 200 and part["clips"] == m.split_counts() == {"train": 159, "valid": 20, "test": 20}
    assert part["listed"] == {"train": 2568, "valid": 328, "test": 329}
    assert set(m.labels) == {c.labels[0] for c in m.clips} and len(m.labels) == 8  # every genre is there
    listed = {f"{t:06d}": s for t, _sub, s, _g, _a, _z in big_fma.expected["tracks"]}
    official = {"training": "train", "validation": "valid", "test": "test"}
    assert all(official[listed[c.id]] == c.split for c in m.clips)  # the official split of each clip
    assert verify_dataset(data_dir, "fma-small", full=True).ok

    from audiocnn.testing.training import write_config  # deferred: imports torch, only this test trains

    cfg = write_config(tmp_path / "fma.yaml", dataset="fma-small", model="test-tiny-mel", epochs=2)
    run_dir = tmp_path / "run"
    assert run(["--data-dir", str(data_dir), "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu"]) == 0
    code, out, _ = run_cli(capsys, "--data-dir", str(data_dir), "evaluate", str(run_dir), "--format", "json")
    res = json.loads(out)
    assert code == 0 and res["n_clips"] == 20 and res["accuracy"] > 0.5  # one tone per genre: 8 classes, chance 1/8

    # Without --max-clips the dataset is completed: the 199 members are not fetched again.
    before = http_server.bytes_served("/fma/fma_small.zip")
    full = prepare_dataset("fma-small", data_dir, source=base, jobs=1, progress=False)
    assert len(full.clips) == 3224 and "partial" not in full.extra
    assert http_server.bytes_served("/fma/fma_small.zip") - before < zip_size - 0.05 * zip_size
    assert http_server.bytes_served("/fma/fma_metadata.zip") < 2 * len(big_fma.files["fma_metadata.zip"])


def test_an_interrupted_member_fetch_resumes_with_the_members_it_has(big_fma, http_server, data_dir, monkeypatch):
    patch_remotes(monkeypatch, "fma-small", big_fma.files)
    base = http_server.add_files("/fma", big_fma.files)
    real = remotezip._write_verified
    calls = {"n": 0}

    def dies_after_50(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(remotezip, "_write_verified", dies_after_50)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("fma-small", data_dir, source=base, jobs=1, progress=False, max_clips=100)
    assert not list((data_dir / "fma-small" / "raw").rglob(".*.part*"))  # no temp file left
    monkeypatch.setattr(remotezip, "_write_verified", real)
    calls["n"] = 0
    counted = {"n": 0}

    def counting(*args, **kw):
        counted["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(remotezip, "_write_verified", counting)
    m = prepare_dataset("fma-small", data_dir, source=base, jobs=1, progress=False, max_clips=100)
    assert len(m.clips) == 100 and counted["n"] == 100 - 48  # run 1 wrote tracks.csv, genres.csv, 48 clips


def test_a_member_that_fails_its_crc_is_one_error_naming_it(http_server, data_dir, monkeypatch, capsys):
    fx = fma_fixture()
    data = bytearray(fx.files["fma_small.zip"])
    zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = next(i for i in zf.infolist() if i.filename.endswith("000002.mp3"))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 100] ^= 0xFF  # the directory still records the right CRC-32
    fx.files["fma_small.zip"] = bytes(data)
    patch_remotes(monkeypatch, "fma-small", fx.files)
    base = http_server.add_files("/fma", fx.files)
    with pytest.raises(CorruptArchiveError, match="000002.mp3.*CRC-32"):
        prepare_dataset("fma-small", data_dir, source=base, jobs=1, progress=False, max_clips=12)
    assert not (data_dir / "fma-small" / "raw" / "fma_small" / "000" / "000002.mp3").exists()
    code, _out, err = run_cli(
        capsys, "--data-dir", str(data_dir), "prepare", "fma-small", "--source", base, "--max-clips", "12"
    )
    assert code != 0 and "000002.mp3" in err and "Traceback" not in err


def test_mtat_three_part_zip_by_members(http_server, data_dir, monkeypatch):
    fx = mtat_fixture()
    patch_remotes(monkeypatch, "mtat", fx.files)
    base = http_server.add_files("/mtat", fx.files)
    m = prepare_dataset("mtat", data_dir, source=base, jobs=1, progress=False, max_clips=6)
    assert len(m.clips) == 6 and m.extra["partial"]["clips"] == m.split_counts()
    assert m.split_counts() == {"train": 4, "valid": 1, "test": 1}  # 6 x 8/13, 2/13, 3/13, largest remainders
    assert sum(http_server.bytes_served(f"/mtat/mp3.zip.00{i}") for i in (1, 2, 3)) < len(fx.expected["zip"])
    assert {p.name for p in (data_dir / "mtat" / "raw").rglob("*.mp3")} == {c.path.split("/")[1] for c in m.clips}
    full = prepare_dataset("mtat", data_dir, source=base, jobs=1, progress=False)
    assert full.split_counts() == fx.expected["counts"]["standard"] and "partial" not in full.extra


def test_a_local_zip_extracts_only_the_chosen_members(data_dir, monkeypatch, tmp_path):
    fx = fma_fixture()
    patch_remotes(monkeypatch, "fma-small", fx.files)
    src = write_files(tmp_path / "dl", fx.files)
    m = prepare_dataset("fma-small", data_dir, source=str(src), jobs=1, progress=False, max_clips=9)
    assert len(m.clips) == 9 and len(list((data_dir / "fma-small" / "raw" / "fma_small").rglob("*.mp3"))) == 9
    full = prepare_dataset("fma-small", data_dir, source=str(src), jobs=1, progress=False)
    assert len(full.clips) == 24


def test_a_server_without_range_support_is_one_line(http_server, data_dir, monkeypatch, capsys):
    fx = fma_fixture()
    patch_remotes(monkeypatch, "fma-small", fx.files)
    for name, data in fx.files.items():
        http_server.add(f"/plain/{name}", data, "ignore-range")
    with pytest.raises(DownloadError, match="Range"):
        prepare_dataset("fma-small", data_dir, source=http_server.base_url + "/plain", progress=False, max_clips=5)


def test_gtzan_cannot_be_cut_and_says_so_in_one_line(data_dir, capsys):
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "prepare", "gtzan", "--max-clips", "10")
    assert code == 2 and "one gzip stream" in err and len(err.strip().splitlines()) <= 2


def test_proportional_subset_keeps_split_shares_and_labels():
    # labels in blocks of ids (as FMA's ids cluster by upload): id order alone would take one label
    items = [(f"{i:04d}", ("train", "train", "train", "valid", "test")[i % 5], f"l{i // 100}") for i in range(700)]
    chosen = proportional_subset(items, 50)
    split = {i: s for i, s, _k in items}
    label = {i: k for i, _s, k in items}
    assert len(chosen) == 50 and Counter(split[i] for i in chosen) == {"train": 30, "valid": 10, "test": 10}
    assert len({label[i] for i in chosen}) == 7
    assert proportional_subset(items, 3) and len({split[i] for i in proportional_subset(items, 3)}) == 3
    assert proportional_subset(items, 700) == sorted(i for i, _s, _k in items)
