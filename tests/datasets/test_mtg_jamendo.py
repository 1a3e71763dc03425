"""MTG-Jamendo: prepare/info/verify of each subset against the repository's data/ tree and
the raw_30s tars in their real names and layout, served on 127.0.0.1 or given as a folder;
resumed transfers, a bad tar fetched again on its own, and --max-clips by whole tars."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from audiocnn.datasets import prepare_dataset, verify_dataset
from audiocnn.datasets.manifest import readable_label
from audiocnn.datasets.mtg_jamendo import PINNED, choose_tars, pinned_digest
from audiocnn.errors import ChecksumError, DownloadError
from audiocnn.testing.archives import write_files
from audiocnn.testing.commands import run_cli
from audiocnn.testing.datasets import no_slow_retries
from audiocnn.testing.tag_datasets import MTG_TAGS, mtg_fixture, patch_mtg_pins


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    no_slow_retries(monkeypatch)


def _tar_requests(srv, nn: int, variant: str = "audio"):
    return [r for r in srv.requests if r["path"].endswith(f"raw_30s_{variant}-{nn:02d}.tar")]


def test_top50_from_a_mirror_url_keeps_tags_splits_and_resumes_a_cut_tar(http_server, data_dir, monkeypatch, capsys):
    fx = mtg_fixture()
    patch_mtg_pins(monkeypatch, fx.files)
    base = http_server.add_files("/mtg", fx.files)
    http_server.add(
        "/mtg/raw_30s/audio/raw_30s_audio-03.tar", fx.files["raw_30s/audio/raw_30s_audio-03.tar"], "drop-once"
    )

    m = prepare_dataset("mtg-jamendo-top50", data_dir, source=base, jobs=1, progress=False)
    tracks = fx.expected["tracks"]
    assert {c.id: (c.split, c.labels) for c in m.clips} == {t: (s, tags) for t, (_p, tags, s) in tracks.items()}
    assert m.labels == sorted(MTG_TAGS) and m.task == "multi-label" and m.split_scheme == "split-0"
    assert {c.path for c in m.clips} == {p for p, _t, _s in tracks.values()}
    assert m.extra["metadata_commit"] == PINNED["commit"] and "partial" not in m.extra
    # the cut tar was resumed from where it stopped, not fetched again from byte 0
    cut = _tar_requests(http_server, 3)
    assert len(cut) == 2 and cut[0]["range"] is None and cut[1]["range"].startswith(f"bytes={cut[0]['sent']}-")
    assert verify_dataset(data_dir, "mtg-jamendo-top50", full=True).ok

    code, out, _ = run_cli(capsys, "info", "mtg-jamendo-top50", "--format", "json")
    info = json.loads(out)
    assert code == 0 and info["splits"] == dict(Counter(s for _p, _t, s in tracks.values()))
    code, out, _ = run_cli(capsys, "info", "mtg-jamendo-top50")
    assert code == 0 and "genre:rock" in out and "mood/theme:happy" in out
    n = len(http_server.requests)
    prepare_dataset("mtg-jamendo-top50", data_dir, source=base, jobs=1, progress=False)
    assert len(http_server.requests) == n  # a finished prepare is a no-op


def test_a_tar_that_fails_its_checksum_is_fetched_again_alone(http_server, data_dir, monkeypatch):
    fx = mtg_fixture(n_tars=4, per_tar=5)
    patch_mtg_pins(monkeypatch, fx.files)
    base = http_server.add_files("/mtg", fx.files)
    http_server.add(
        "/mtg/raw_30s/audio/raw_30s_audio-02.tar", fx.files["raw_30s/audio/raw_30s_audio-02.tar"], "corrupt-once"
    )
    m = prepare_dataset("mtg-jamendo-moodtheme", data_dir, source=base, jobs=1, progress=False)
    assert len(_tar_requests(http_server, 2)) == 2
    assert all(len(_tar_requests(http_server, nn)) == 1 for nn in (0, 1, 3))
    assert all(lab.startswith("mood/theme---") for lab in m.labels)
    moody = {t for t, (_p, tags, _s) in fx.expected["tracks"].items() if any(x.startswith("mood/") for x in tags)}
    assert {c.id for c in m.clips} == moody


def test_a_track_that_fails_its_checksum_stops_with_one_line(data_dir, monkeypatch, capsys, tmp_path):
    fx = mtg_fixture(n_tars=2, per_tar=5)
    rel = "data/download/raw_30s_audio_sha256_tracks.txt"
    lines = fx.files[rel].decode().splitlines()
    lines[0] = "0" * 64 + " " + lines[0].split(" ", 1)[1]
    fx.files[rel] = ("\n".join(lines) + "\n").encode()
    patch_mtg_pins(monkeypatch, fx.files)
    src = write_files(tmp_path / "mirror", fx.files)
    with pytest.raises(ChecksumError, match="sha256 differs from raw_30s_audio_sha256_tracks.txt"):
        prepare_dataset("mtg-jamendo", data_dir, source=str(src), jobs=1, progress=False)
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "prepare", "mtg-jamendo", "--source", str(src))
    assert code != 0 and len(err.strip().splitlines()) <= 2 and "sha256" in err


def test_audio_low_split_1_from_a_folder(data_dir, monkeypatch, tmp_path):
    fx = mtg_fixture(n_tars=3, per_tar=5, variants=("audio-low",))
    patch_mtg_pins(monkeypatch, fx.files)
    src = write_files(tmp_path / "mirror", fx.files)
    m = prepare_dataset(
        "mtg-jamendo", data_dir, source=str(src), split_scheme="split-1", variant="audio-low", jobs=1, progress=False
    )
    assert all(c.path.endswith(".low.mp3") for c in m.clips) and len(m.clips) == 15
    swapped = {"valid": "test", "test": "valid"}
    assert all(
        c.split == swapped.get(s, s) for c in m.clips for t, (_p, _tg, s) in [(c.id, fx.expected["tracks"][c.id])]
    )
    assert m.extra["variant"] == "audio-low"


def test_max_clips_takes_the_fewest_tars_and_a_second_run_completes(http_server, data_dir, monkeypatch, capsys):
    fx = mtg_fixture(n_tars=6, per_tar=10)
    patch_mtg_pins(monkeypatch, fx.files)
    base = http_server.add_files("/mtg", fx.files)
    m = prepare_dataset("mtg-jamendo-top50", data_dir, source=base, jobs=1, progress=False, max_clips=15)
    fetched = {nn for nn in range(6) if _tar_requests(http_server, nn)}
    assert len(fetched) == 2 and len(m.clips) == 20
    assert m.extra["partial"]["clips"] == {"train": 12, "valid": 4, "test": 4}
    assert m.extra["partial"]["listed"] == {"train": 36, "valid": 12, "test": 12}
    code, out, _ = run_cli(capsys, "info", "mtg-jamendo-top50", "--format", "json")
    assert json.loads(out)["partial"]["max_clips"] == 15

    full = prepare_dataset("mtg-jamendo-top50", data_dir, source=base, jobs=1, progress=False)
    assert len(full.clips) == 60 and "partial" not in full.extra
    assert all(len(_tar_requests(http_server, nn)) == 1 for nn in range(6))  # the first two were reused


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("mtg-jamendo", ""),
        ("mtg-jamendo-top50", ""),
        ("mtg-jamendo-genre", "genre---"),
        ("mtg-jamendo-instrument", "instrument---"),
        ("mtg-jamendo-moodtheme", "mood/theme---"),
    ],
)
def test_each_subset_prepares_verifies_and_informs(name, prefix, data_dir, monkeypatch, capsys, tmp_path):
    fx = mtg_fixture(n_tars=2, per_tar=5)
    patch_mtg_pins(monkeypatch, fx.files)
    src = write_files(tmp_path / "mirror", fx.files)
    m = prepare_dataset(name, data_dir, source=str(src), jobs=1, progress=False)
    want = {t for t, (_p, tags, _s) in fx.expected["tracks"].items() if any(x.startswith(prefix) for x in tags)}
    assert {c.id for c in m.clips} == want
    assert all(lab.startswith(prefix) for c in m.clips for lab in c.labels)
    assert m.labels == sorted({lab for c in m.clips for lab in c.labels})
    code, out, _ = run_cli(capsys, "--data-dir", str(data_dir), "verify", name, "--full")
    assert code == 0 and "missing: 0" in out and "corrupt: 0" in out
    code, out, _ = run_cli(capsys, "--data-dir", str(data_dir), "info", name, "--format", "json")
    assert code == 0 and sum(json.loads(out)["splits"].values()) == len(want)


def test_an_interrupted_set_of_tars_resumes_with_the_tar_it_stopped_at(http_server, data_dir, monkeypatch):
    fx = mtg_fixture(n_tars=6, per_tar=5)
    patch_mtg_pins(monkeypatch, fx.files)
    files = dict(fx.files)
    missing = files.pop("raw_30s/audio/raw_30s_audio-04.tar")  # the host fails on tar 4 (404)
    base = http_server.add_files("/mtg", files)
    with pytest.raises(DownloadError, match="raw_30s_audio-04.tar"):
        prepare_dataset("mtg-jamendo-top50", data_dir, source=base, jobs=1, progress=False)
    http_server.add("/mtg/raw_30s/audio/raw_30s_audio-04.tar", missing)
    m = prepare_dataset("mtg-jamendo-top50", data_dir, source=base, jobs=1, progress=False)
    assert len(m.clips) == 30
    assert [len(_tar_requests(http_server, nn)) for nn in range(6)] == [1, 1, 1, 1, 2, 1]


def test_choose_tars_is_fewest_and_keeps_proportions():
    per_tar = {
        "a": Counter(train=10),
        "b": Counter(train=6, valid=2, test=2),
        "c": Counter(train=5, valid=3, test=2),
        "d": Counter(valid=5, test=5),
    }
    assert choose_tars(per_tar, 8) == ["c"]  # one tar is enough: the one closest to 21/10/9 (c: 5/3/2)
    assert choose_tars(per_tar, 15) == ["b", "c"]
    assert choose_tars(per_tar, 100) == ["a", "b", "c", "d"]


def test_every_published_metadata_file_has_a_pinned_digest():
    for name in (
        "autotagging",
        "autotagging_top50tags",
        "autotagging_genre",
        "autotagging_instrument",
        "autotagging_moodtheme",
    ):
        for i in range(5):
            for part in ("train", "validation", "test"):
                digest, algorithm = pinned_digest(f"data/splits/split-{i}/{name}-{part}.tsv")
                assert algorithm in ("sha256", "git-blob-sha1") and len(digest) in (40, 64)
    for variant in ("audio", "audio-low"):
        assert pinned_digest(f"data/download/raw_30s_{variant}_sha256_tars.txt")[1] == "sha256"


def test_readable_label():
    assert readable_label("genre---rock") == "genre:rock"
    assert readable_label("mood/theme---happy") == "mood/theme:happy"
    assert readable_label("rock") == "rock"


def test_datasets_lists_the_new_datasets_with_size_license_and_citation(data_dir, capsys):
    code, out, _ = run_cli(capsys, "--data-dir", str(data_dir), "datasets", "--format", "json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    for name in (
        "mtg-jamendo",
        "mtg-jamendo-top50",
        "mtg-jamendo-genre",
        "mtg-jamendo-instrument",
        "mtg-jamendo-moodtheme",
        "msd",
    ):
        assert rows[name]["download_size"] and rows[name]["license"] and rows[name]["citation"]
    assert "Bogdanov" in rows["mtg-jamendo-top50"]["citation"] and rows["mtg-jamendo-top50"]["classes"] == 50
    code, out, _ = run_cli(capsys, "--data-dir", str(data_dir), "datasets")
    assert code == 0 and "mtg-jamendo-moodtheme" in out and "licenses and citations" in out


def test_variant_is_checked_before_anything_is_fetched(data_dir, capsys):
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "prepare", "mtg-jamendo", "--variant", "melspecs")
    assert code == 2 and "variants audio, audio-low" in err
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "prepare", "gtzan", "--variant", "audio-low")
    assert code == 2 and "no --variant" in err
