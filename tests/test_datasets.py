"""prepare + info + verify for gtzan, mtat, fma-small and folder against fixture archives
in each dataset's real layout, served by a local HTTP server or given with --source."""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
import shutil
from collections import Counter

import pytest
from dataset_fixtures import (  # noqa: F401 (http_server is a fixture)
    fma_fixture,
    folder_fixture,
    gtzan_fixture,
    http_server,
    mtat_fixture,
    no_slow_retries,
    patch_remotes,
    run_cli,
    write_files,
)

from audiocnn import pipeline
from audiocnn.datasets import (
    dataset_info,
    get_dataset,
    prepare_dataset,
    read_manifest,
    register_dataset,
    verify_dataset,
)
from audiocnn.datasets.gtzan import fault_filtered_split
from audiocnn.datasets.mtat import derive_top_tags, split_of_path
from audiocnn.datasets.registry import read_resource_lines
from audiocnn.datasets.spec import DatasetSpec
from audiocnn.datasets.splits import stratified_split
from audiocnn.errors import DownloadError, UsageError

INFO_KEYS = {"name", "task", "labels", "splits", "label_counts", "excluded"}


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    no_slow_retries(monkeypatch)


# ----------------------------------------------------------------------------- GTZAN


def test_gtzan_fault_filtered_via_mirror(http_server, data_dir, monkeypatch, capsys, caplog):
    fx = gtzan_fixture("au")
    patch_remotes(monkeypatch, "gtzan", fx.files)
    monkeypatch.setenv("AUDIOCNN_MIRROR", http_server.add_files("/mirror", fx.files))

    manifest = prepare_dataset("gtzan", data_dir, jobs=1, progress=False)
    chosen = fx.expected["chosen"]
    listed = fault_filtered_split()
    present = {cid: s for cid, s in chosen.items() if s != "excluded"}
    # Every clip of the archive that a list names is there, in the list's split.
    assert {c.id: c.split for c in manifest.clips} == present
    assert all(c.labels == [c.id.split(".")[0]] for c in manifest.clips)
    assert all(c.sample_rate == 22050 and abs(c.duration - 1.0) < 1e-3 for c in manifest.clips)
    assert all(c.integrity["size"] > 0 and c.integrity["frames"] == 22050 for c in manifest.clips)
    reasons = {e["id"]: e["reason"] for e in manifest.excluded}
    for cid, s in chosen.items():
        if s == "excluded":
            assert "not in the fault-filtered split" in reasons[cid]
    absent = [cid for cid in listed if cid not in chosen]
    assert all("not in the archive" in reasons[cid] for cid in absent)
    assert len(manifest.excluded) == len(absent) + sum(s == "excluded" for s in chosen.values())

    code, out, _ = run_cli(capsys, "info", "gtzan", "--format", "json")
    assert code == 0
    info = json.loads(out)
    assert set(info) == INFO_KEYS
    assert info["task"] == "single-label" and info["labels"][0] == "blues" and len(info["labels"]) == 10
    assert info["splits"] == dict(Counter(present.values()))
    assert all(set(e) == {"id", "reason"} for e in info["excluded"])

    code, out, _ = run_cli(capsys, "verify", "gtzan")
    assert code == 0 and "missing: 0" in out and "corrupt: 0" in out

    # Re-running is a no-op that says so (no request, manifest untouched).
    mtime = (data_dir / "gtzan" / "manifest.jsonl").stat().st_mtime_ns
    n_requests = len(http_server.requests)
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="audiocnn.datasets"):
        prepare_dataset("gtzan", data_dir, jobs=1, progress=False)
    # (the CLI calls above installed their own stderr handler, so look in both places)
    assert "nothing to do" in caplog.text + capsys.readouterr().err
    assert (data_dir / "gtzan" / "manifest.jsonl").stat().st_mtime_ns == mtime
    assert len(http_server.requests) == n_requests

    # verify finds a deleted file and a truncated one, reported separately.
    m = read_manifest(data_dir / "gtzan")
    gone, cut = m.clips[0], m.clips[1]
    m.audio_path(gone).unlink()
    p = m.audio_path(cut)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    report = verify_dataset(data_dir, "gtzan")
    assert [x["id"] for x in report.missing] == [gone.id]
    assert [x["id"] for x in report.corrupt] == [cut.id] and "truncated" in report.corrupt[0]["reason"]
    code, out, err = run_cli(capsys, "verify", "gtzan", "--format", "json")
    assert code == 1
    assert json.loads(out)["missing"][0]["id"] == gone.id
    assert "prepare gtzan --force" in err

    # --force extracts again and the dataset verifies clean; the download is not repeated.
    served = http_server.bytes_served("/mirror/genres.tar.gz")
    prepare_dataset("gtzan", data_dir, jobs=1, progress=False, force=True)
    assert verify_dataset(data_dir, "gtzan", full=True).ok
    assert http_server.bytes_served("/mirror/genres.tar.gz") == served


def test_gtzan_wav_variant_random_split_parallel(tmp_path, data_dir):
    fx = gtzan_fixture("wav")
    src = write_files(tmp_path / "dl", fx.files) / "gtzan-kaggle.zip"
    manifest = prepare_dataset("gtzan", data_dir, source=str(src), split_scheme="random", jobs=2, progress=False)
    chosen = fx.expected["chosen"]
    assert len(manifest.clips) == len(chosen) - 1  # everything but the corrupt jazz.00054
    bad = [e for e in manifest.excluded if e["id"] == "jazz.00054"]
    assert len(bad) == 1 and "known corrupt" in bad[0]["reason"] and "does not decode" in bad[0]["reason"]
    assert manifest.split_scheme == "random" and manifest.extra["layout"] == "genres_original"
    # stratified: every genre with 3+ clips appears in every split
    by_genre = Counter((c.labels[0], c.split) for c in manifest.clips)
    assert all(by_genre[(g, s)] >= 1 for g in ("blues", "rock") for s in ("train", "valid", "test"))
    # same seed, same split
    again = prepare_dataset(
        "gtzan", data_dir, source=str(src), split_scheme="random", jobs=1, progress=False, force=True
    )
    assert {c.id: c.split for c in again.clips} == {c.id: c.split for c in manifest.clips}
    assert verify_dataset(data_dir, "gtzan", jobs=2).ok


def test_prepare_can_extract_features(tmp_path, data_dir):
    pytest.importorskip("audiocnn.features.store")
    fx = gtzan_fixture("au")
    src = write_files(tmp_path / "dl", fx.files)
    pipeline.prepare("gtzan", data_dir, source=str(src), skip_checksum=True, jobs=1, progress=False, features="both")
    stores = sorted(p.name.split("-")[0] for p in (data_dir / "gtzan" / "features").iterdir())
    assert stores == ["mel", "waveform"]
    assert all((p / "complete.json").is_file() for p in (data_dir / "gtzan" / "features").iterdir())


def test_gtzan_dead_host_says_where_to_get_it(http_server, data_dir, monkeypatch):
    patch_remotes(monkeypatch, "gtzan", {}, urls={"genres.tar.gz": http_server.base_url + "/gone/genres.tar.gz"})
    with pytest.raises(DownloadError) as err:
        prepare_dataset("gtzan", data_dir, progress=False)
    msg = str(err.value)
    assert "--source" in msg and "Hugging Face" in msg and "offline since 2022" in msg


def test_gtzan_checksum_mismatch_from_mirror(http_server, data_dir, monkeypatch, capsys):
    # The registry's real md5 against the fixture's bytes: must fail, naming both digests.
    fx = gtzan_fixture("au")
    monkeypatch.setenv("AUDIOCNN_MIRROR", http_server.add_files("/m", fx.files))
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "prepare", "gtzan", "-j", "1")
    assert code == 1
    assert "5b3d6dddb579ab49814ab86dba69e7c7" in err and "genres.tar.gz" in err and "got " in err


# ----------------------------------------------------------------------------- MTAT


def test_mtat_split_zip_from_source_url(http_server, data_dir, monkeypatch, capsys):
    fx = mtat_fixture()
    patch_remotes(monkeypatch, "mtat", fx.files)
    base = http_server.add_files("/mtat", fx.files)
    code, out, err = run_cli(
        capsys, "--data-dir", str(data_dir), "prepare", "mtat", "--source", base, "-j", "1", "--format", "json"
    )
    assert code == 0, err
    info = json.loads(out)
    assert info["task"] == "multi-label"
    assert info["labels"] == read_resource_lines("mtat", "top50_tags.txt")
    assert len(info["labels"]) == 50 and info["labels"][:3] == ["guitar", "classical", "slow"]
    assert info["splits"] == fx.expected["counts"]["standard"]
    reasons = {e["id"]: e["reason"] for e in info["excluded"]}
    for cid in ("35644", "55753", "57881"):
        assert "known broken" in reasons[cid]
    assert sum("no top-50 tag" in r for r in reasons.values()) == sum(
        fx.expected["counts"]["all-clips"].values()
    ) - sum(fx.expected["counts"]["standard"].values())
    m = read_manifest(data_dir / "mtat")
    assert {c.id: c.labels for c in m.clips} == {k: v for k, v in fx.expected["labels_of"].items() if v}
    assert all(c.sample_rate == 16000 for c in m.clips)
    assert m.extra["top50_matches_literature"] is False  # a 20-clip fixture cannot reproduce the counts

    # all-clips keeps untagged clips; the archive is not extracted again.
    extracted = (data_dir / "mtat" / ".state" / "extract-mp3.zip.done").stat().st_mtime_ns
    m2 = prepare_dataset("mtat", data_dir, source=base, split_scheme="all-clips", jobs=1, progress=False)
    assert m2.split_counts() == fx.expected["counts"]["all-clips"]
    assert (data_dir / "mtat" / ".state" / "extract-mp3.zip.done").stat().st_mtime_ns == extracted
    code, _out, _err = run_cli(capsys, "--data-dir", str(data_dir), "verify", "mtat")
    assert code == 0


def test_mtat_folder_rule_and_top_tag_derivation():
    assert [split_of_path(f"{d}/x.mp3") for d in "0bcdf"] == ["train", "train", "valid", "test", "test"]
    assert split_of_path("g/x.mp3") is None
    tags = ["a", "b", "c", "d"]
    rows = [("1", ["1", "0", "1", "0"], "0/x"), ("2", ["0", "0", "1", "1"], "0/y"), ("3", ["0", "0", "1", "1"], "0/z")]
    assert derive_top_tags(tags, rows, 2) == ["c", "d"]
    assert derive_top_tags(tags, rows, 3) == ["c", "d", "a"]


# ----------------------------------------------------------------------------- FMA


def test_fma_small_single_and_multi_label(http_server, data_dir, monkeypatch, capsys):
    fx = fma_fixture()
    patch_remotes(monkeypatch, "fma-small", fx.files)
    monkeypatch.setenv("AUDIOCNN_MIRROR", http_server.add_files("/fma", fx.files))
    m = prepare_dataset("fma-small", data_dir, jobs=1, progress=False)
    assert m.task == "single-label"
    assert m.labels == sorted(fx.expected["genre_names"][g] for g in (15, 38, 17, 21, 1235, 2, 10, 12))
    assert m.split_counts() == fx.expected["splits"]
    reasons = {e["id"]: e["reason"] for e in m.excluded}
    assert "known empty clip" in reasons["099134"]
    assert reasons["140000"] == "missing from the archive"
    assert "150000" not in reasons and "150003" not in reasons  # other subsets are not part of small
    assert not (data_dir / "fma-small" / "raw" / "fma_metadata" / "features.csv").exists()
    assert all(c.sample_rate == 44100 and c.path.startswith("fma_small/") for c in m.clips)

    code, out, _ = run_cli(capsys, "--data-dir", str(data_dir), "info", "fma-small", "--format", "json")
    assert code == 0 and set(json.loads(out)) == INFO_KEYS

    mm = prepare_dataset("fma-small", data_dir, task="multi-label", jobs=1, progress=False)
    assert mm.task == "multi-label"
    labels = {c.id: c.labels for c in mm.clips}
    assert labels["000002"] == ["Ambient Electronic", "Electronic"]  # genres_all [15, 42]
    assert "Punk" in mm.labels
    assert verify_dataset(data_dir, "fma-small").ok


def test_fma_wrong_task_and_unknown_scheme(data_dir):
    with pytest.raises(UsageError, match="supports"):
        prepare_dataset("gtzan", data_dir, task="multi-label", progress=False)
    with pytest.raises(UsageError, match="split schemes"):
        prepare_dataset("fma-small", data_dir, split_scheme="random", progress=False)


# ----------------------------------------------------------------------------- folder


def test_folder_subfolders(tmp_path, data_dir, capsys):
    src = tmp_path / "music"
    made = folder_fixture(src)
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "prepare", "folder", "--source", str(src))
    assert code == 2 and "--name" in err
    code, out, err = run_cli(
        capsys, "--data-dir", str(data_dir), "prepare", "folder", "--source", str(src), "--name", "mine", "-j", "1"
    )
    assert code == 0, err
    m = read_manifest(data_dir / "mine")
    assert m.dataset == "folder" and m.name == "mine" and m.task == "single-label"
    assert m.audio_root == str(src.resolve())
    assert m.labels == ["calm", "energetic", "spoken"]
    assert {c.path: c.labels[0] for c in m.clips} == made  # loose.wav and notes.txt are not clips
    assert m.split_counts() == {"train": 9, "valid": 3, "test": 3}
    assert dataset_info(data_dir, "mine")["splits"] == {"train": 9, "valid": 3, "test": 3}
    code, out, _ = run_cli(capsys, "--data-dir", str(data_dir), "datasets", "--format", "json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["mine"]["prepared"] and rows["mine"]["dataset"] == "folder"
    assert rows["gtzan"]["prepared"] is False and rows["gtzan"]["classes"] == 10
    code, out, _ = run_cli(capsys, "--data-dir", str(data_dir), "datasets")
    assert code == 0 and "fma-medium" in out and "mine" in out


def test_folder_with_a_file_name_that_is_not_utf8(tmp_path, data_dir, capsys):
    """POSIX names are bytes: the clip is probed, kept in the manifest losslessly (JSON
    escapes \\udcff) and verified; the manifest writer leaves no temp file."""
    src = tmp_path / "music"
    folder_fixture(src)
    good = next((src / "calm").iterdir())
    bad = os.fsencode(src / "calm") + b"/bad\xff\xfe.wav"
    shutil.copyfile(good, bad)
    code, _, err = run_cli(
        capsys, "--data-dir", str(data_dir), "prepare", "folder", "--source", str(src), "--name", "mine", "-j", "1"
    )
    assert code == 0 and "Traceback" not in err, err
    text = (data_dir / "mine" / "manifest.jsonl").read_bytes().decode("utf-8")  # valid UTF-8 throughout
    assert "bad\\udcff\\udcfe.wav" in text
    m = read_manifest(data_dir / "mine")
    clip = next(c for c in m.clips if "bad" in c.path)
    assert os.fsencode(m.audio_path(clip)) == bad and not m.excluded
    assert sorted(p.name for p in (data_dir / "mine").iterdir()) == [".state", "manifest.jsonl"]
    assert verify_dataset(data_dir, "mine").ok


def test_folder_labels_csv_multilabel_with_split(tmp_path, data_dir):
    src = tmp_path / "music"
    made = folder_fixture(src)
    paths = sorted(made)
    csv_path = tmp_path / "labels.csv"
    lines = ["path,labels,split"]
    for i, p in enumerate(paths):
        labels = "rock;loud" if i % 2 else "quiet"
        lines.append(f"{p},{labels},{['train', 'validation', 'test'][i % 3]}")
    lines.append("does/not/exist.wav,rock,train")
    csv_path.write_text("\n".join(lines) + "\n")
    m = prepare_dataset(
        "folder", data_dir, source=str(src), labels_file=str(csv_path), dataset_name="tagged", jobs=1, progress=False
    )
    assert m.task == "multi-label" and m.labels == ["loud", "quiet", "rock"]
    assert {c.path: c.labels for c in m.clips}[paths[1]] == ["loud", "rock"]
    assert {c.path: c.split for c in m.clips}[paths[1]] == "valid"
    assert [e["reason"] for e in m.excluded] == ["listed in the labels CSV but not found"]
    with pytest.raises(UsageError, match="several labels"):
        prepare_dataset(
            "folder",
            data_dir,
            source=str(src),
            labels_file=str(csv_path),
            dataset_name="t2",
            task="single-label",
            progress=False,
        )


def test_mtat_source_folder_missing_a_part_is_named_and_nothing_is_downloaded(
    http_server, data_dir, monkeypatch, capsys, tmp_path
):
    fx = mtat_fixture()
    urls = {name: http_server.add(f"/upstream/{name}", data) for name, data in fx.files.items()}
    patch_remotes(monkeypatch, "mtat", fx.files, urls=urls)  # "upstream" is the local server
    src = write_files(tmp_path / "mtat-files", {k: v for k, v in fx.files.items() if k != "mp3.zip.002"})
    args = ("--data-dir", str(data_dir), "prepare", "mtat", "--source", str(src), "-j", "1")
    code, _out, err = run_cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert f"--source {src}: mp3.zip.002 is not there" in lines[0] and "nothing was downloaded" in lines[0]
    assert f"--download-missing to fetch it from {urls['mp3.zip.002']} (1.0 GB)" in lines[0]
    assert http_server.requests == []
    code, out, err = run_cli(capsys, *args, "--download-missing", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["splits"] == fx.expected["counts"]["standard"]
    assert [r["path"] for r in http_server.requests] == ["/upstream/mp3.zip.002"]


def _same_size_other_audio(path) -> bytes:
    """Another recording of exactly the same size and frame count as the WAV at ``path``."""
    import soundfile as sf

    y, sr = sf.read(path, dtype="int16")
    buf = io.BytesIO()
    sf.write(buf, y[::-1].copy(), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_verify_full_catches_a_clip_replaced_by_one_of_the_same_size_and_length(tmp_path, data_dir, capsys):
    src = tmp_path / "music"
    folder_fixture(src)
    code, _out, err = run_cli(
        capsys, "--data-dir", str(data_dir), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1"
    )
    assert code == 0, err
    clip = src / "calm" / "take0.wav"
    other = _same_size_other_audio(clip)
    assert len(other) == clip.stat().st_size and other != clip.read_bytes()
    clip.write_bytes(other)
    code, _out, _err = run_cli(capsys, "--data-dir", str(data_dir), "verify", "m", "-j", "1")
    assert code == 0  # the quick check: size and header only, as --help says
    code, out, _err = run_cli(
        capsys, "--data-dir", str(data_dir), "verify", "m", "--full", "-j", "1", "--format", "json"
    )
    report = json.loads(out)
    assert code == 1 and [c["path"] for c in report["corrupt"]] == ["calm/take0.wav"]
    assert "sha256 differs" in report["corrupt"][0]["reason"]


@pytest.mark.parametrize("name", ["pretrained", "onnx", "ONNX"])
def test_a_dataset_cannot_take_a_reserved_folder_of_the_data_dir(tmp_path, data_dir, capsys, name):
    src = tmp_path / "music"
    folder_fixture(src)
    code, _out, err = run_cli(
        capsys, "--data-dir", str(data_dir), "prepare", "folder", "--source", str(src), "--name", name
    )
    assert code == 2 and f"--name {name}: the data dir keeps its {name.lower()}/ folder" in err
    assert not (data_dir / name).exists() and not (data_dir / name.lower()).exists()


def test_verify_of_a_moved_folder_dataset_suggests_a_command_that_works(tmp_path, data_dir, capsys):
    src = tmp_path / "music"
    folder_fixture(src)
    prepare = ("--data-dir", str(data_dir), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1")
    code, _out, err = run_cli(capsys, *prepare, "--seed", "3")
    assert code == 0, err
    moved = tmp_path / "moved music"
    src.rename(moved)
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "verify", "m", "-j", "1")
    assert code == 1
    hint = err.strip().splitlines()[-1]
    suggested = "audiocnn prepare folder --source NEW_PLACE --name m --seed 3 --force"
    assert f"the audio folder {src} is gone; if it moved, run `{suggested}`" in hint
    argv = shlex.split(suggested.replace("NEW_PLACE", shlex.quote(str(moved))))[1:]
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), *argv, "-j", "1")
    assert code == 0, err
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "verify", "m", "-j", "1")
    assert code == 0, err


# ----------------------------------------------------------------------------- registry, splits


def test_registry_rejects_duplicates_and_suggests_names():
    class Dup(DatasetSpec):
        name = "gtzan"

    with pytest.raises(Exception, match="already registered"):
        register_dataset(Dup)
    with pytest.raises(UsageError, match="did you mean 'mtat'"):
        get_dataset("mtta")


def test_stratified_split_is_seeded_and_covers_every_split():
    items = [(f"{g}{i}", g) for g in "abc" for i in range(10)]
    a = stratified_split(items, seed=1)
    assert a == stratified_split(list(reversed(items)), seed=1)
    assert a != stratified_split(items, seed=2)
    per = Counter((k[0], s) for k, s in a.items())
    assert all(per[(g, "train")] == 8 and per[(g, "valid")] == 1 and per[(g, "test")] == 1 for g in "abc")


def test_info_and_verify_of_unprepared_dataset_name_the_fix(data_dir, capsys):
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "info", "gtzan")
    assert code == 1 and "audiocnn prepare gtzan" in err


def test_probe_block_decoding_matches_whole_file(tmp_path, monkeypatch):
    from dataset_fixtures import audio_bytes

    from audiocnn.datasets import probe

    for fmt, sr in (("mp3", 16000), ("wav", 22050)):
        p = tmp_path / f"x.{fmt}"
        p.write_bytes(audio_bytes(fmt, seconds=3.0, sr=sr))
        whole = probe.probe_clip(str(p))
        with monkeypatch.context() as m:
            m.setattr(probe, "WHOLE_FILE_FRAMES", 0)
            m.setattr(probe, "BLOCK_FRAMES", 1152 * 4)
            blocks = probe.probe_clip(str(p))
        assert whole["ok"] and blocks["frames"] == whole["frames"] and whole["sample_rate"] == sr
    p.write_bytes(p.read_bytes()[:2000])  # truncated wav: header promises more than decodes
    res = probe.probe_clip(str(p))
    assert not res["ok"] and "truncated" in res["reason"]
