"""Feature store: round trip, resume after a crash, -j independence, bad clips, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from audiocnn.audio import load_audio
from audiocnn.cli.common import commands_in
from audiocnn.cli.main import run
from audiocnn.datasets.manifest import read_manifest
from audiocnn.errors import FeatureError
from audiocnn.features import store as store_mod
from audiocnn.features.frontends import MelConfig, WaveformConfig, build_frontend
from audiocnn.features.store import (
    CRASH_ENV,
    FeatureStore,
    StoreClip,
    StoreSource,
    default_frontend,
    extract_features,
    open_store,
    store_dir,
)
from audiocnn.features.store import chunks as chunks_mod
from audiocnn.features.store import extract as extract_mod
from audiocnn.features.store import merge as merge_mod
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.testing.store_data import CLIPS, make_mixed_dataset
from audiocnn.training.data import manifest_fingerprint, open_dataset_store

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Decode in ~0.3 s blocks so every clip streams through several blocks."""
    monkeypatch.setattr(chunks_mod, "_BLOCK_SECONDS", 0.3)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ref") / "ref"
    make_mixed_dataset(root)
    return root / "raw"


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every data and index file of a finished store (what must not depend on how it was made)."""
    names = [p.name for p in sorted(path.iterdir()) if p.suffix in (".bin", ".jsonl") or p.name.endswith(".index.json")]
    return {n: (path / n).read_bytes() for n in names}


def direct(config, path: Path) -> np.ndarray:
    y = load_audio(path, config.sample_rate)
    with torch.no_grad():
        return build_frontend(config)(torch.from_numpy(y)[None])[0].numpy()


MEL_CONFIGS = [
    MelConfig(),
    MelConfig(sample_rate=22050, n_fft=1024, hop_length=512, n_mels=48, pad_mode="reflect", top_db=80.0),
    MelConfig(n_fft=400, win_length=300, hop_length=160, n_mels=40, center=False, compression="log10_10000"),
]


@pytest.mark.parametrize(
    "config", [WaveformConfig(), WaveformConfig(sample_rate=22050)] + MEL_CONFIGS, ids=lambda c: f"{c.kind}-{c.hash}"
)
def test_round_trip_equals_direct_frontend(tmp_path, audio_files, config) -> None:
    ds = make_mixed_dataset(tmp_path / "ds", audio_root=audio_files)
    st = open_dataset_store(ds, config, jobs=1, progress=False, min_seconds=0.5)
    assert st.path == store_dir(ds, config)
    manifest = read_manifest(ds)
    for split in ("train", "valid", "test"):
        clips = manifest.split(split)
        assert st.clip_ids(split) == [c.id for c in clips]
        np.testing.assert_array_equal(st.targets(split), [manifest.targets(c)[0] for c in clips])
        for i, clip in enumerate(clips):
            ref = direct(config, manifest.audio_path(clip))
            got = st.read(split, i)
            assert got.dtype == np.float32 and got.shape == ref.shape
            assert st.length(split, i) == ref.shape[-1]
            if config.kind == "waveform":
                tol = 0.5 / store_mod.WAVEFORM_SCALE + 1e-6  # int16 rounding
            else:
                tol = np.abs(ref).max() * 2.0**-11 + 1e-3  # float16 rounding of the largest value
            np.testing.assert_allclose(got, ref, rtol=0, atol=tol, err_msg=f"{split}/{clip.id}")
            # a crop is a slice of the same data
            np.testing.assert_array_equal(st.read(split, i, 5, 17), got[..., 5:22])


def test_jobs_do_not_change_the_store(tmp_path, audio_files) -> None:
    config = WaveformConfig()
    one = open_dataset_store(
        make_mixed_dataset(tmp_path / "one", audio_root=audio_files), config, jobs=1, progress=False, chunk_clips=2
    )
    two = open_dataset_store(
        make_mixed_dataset(tmp_path / "two", audio_root=audio_files), config, jobs=2, progress=False, chunk_clips=2
    )
    assert store_bytes(one.path) == store_bytes(two.path)
    assert not (two.path / "parts").exists()


def test_resume_after_worker_crash(tmp_path, audio_files, monkeypatch) -> None:
    config = MelConfig(n_mels=32)
    ref = open_dataset_store(
        make_mixed_dataset(tmp_path / "ref", audio_root=audio_files), config, jobs=1, progress=False, chunk_clips=2
    )
    ds = make_mixed_dataset(tmp_path / "ds", audio_root=audio_files)
    monkeypatch.setenv(CRASH_ENV, "3")  # each worker dies on its third clip
    with pytest.raises(FeatureError, match="worker process died"):
        open_dataset_store(ds, config, jobs=2, progress=False, chunk_clips=2)
    monkeypatch.delenv(CRASH_ENV)
    path = store_dir(ds, config)
    assert not (path / "complete.json").exists()
    with pytest.raises(
        FeatureError, match=r"was not finished \(run `features\('ds', kind='mel', overrides=\['n_mels=32'\]\)`\)"
    ):
        open_store(ds, config)
    committed = {p.stem for p in (path / "parts").glob("*.json")}
    assert committed, "a worker should have committed its first chunk before dying"
    # resume in-process, recording which chunks get extracted again
    redone: list[str] = []
    real = extract_mod.extract_chunk
    monkeypatch.setattr(extract_mod, "extract_chunk", lambda t: (redone.append(t["name"]), real(t))[1])
    st = open_dataset_store(ds, config, jobs=1, progress=False, chunk_clips=2)
    all_chunks = {"train-000000", "train-000001", "valid-000000", "test-000000"}
    assert set(redone) == all_chunks - committed
    assert store_bytes(st.path) == store_bytes(ref.path)


def test_resume_after_crash_while_merging(tmp_path, audio_files, monkeypatch) -> None:
    config = WaveformConfig()
    ref = open_dataset_store(
        make_mixed_dataset(tmp_path / "ref", audio_root=audio_files), config, jobs=1, progress=False, chunk_clips=1
    )
    ds = make_mixed_dataset(tmp_path / "ds", audio_root=audio_files)
    monkeypatch.setattr(merge_mod, "_MERGE_STEP_BYTES", 1)  # record progress after every part
    real = merge_mod.write_json

    def crash_on_second_part(path, obj, **kw):
        if path.name == "train.merge.json" and obj["merged"] == 2:
            raise KeyboardInterrupt  # stands in for a kill between append and record
        real(path, obj, **kw)

    monkeypatch.setattr(merge_mod, "write_json", crash_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        open_dataset_store(ds, config, jobs=1, progress=False, chunk_clips=1)
    monkeypatch.setattr(merge_mod, "write_json", real)
    st = open_dataset_store(ds, config, jobs=1, progress=False, chunk_clips=1)
    assert store_bytes(st.path) == store_bytes(ref.path)


def test_bad_clips_are_skipped_and_listed(tmp_path, audio_files) -> None:
    import shutil

    raw = tmp_path / "ds" / "raw"
    shutil.copytree(audio_files, raw)
    write_audio(raw / "short.wav", synth_tone(0.3, 22050), 22050)
    bad = {"corrupt.mp3": os.urandom(3000), "empty.wav": b""}
    clips = CLIPS + [("short", 0.3, 22050, 1, "wav")]
    # write_audio above made short.wav; make_dataset must not overwrite the copied files
    ds = make_mixed_dataset(tmp_path / "ds", clips=clips, audio_root=raw, extra_files=bad)
    with pytest.raises(FeatureError, match=r"3 of 11 clips failed .*max_failure_fraction=0\.28\)`") as err:
        open_dataset_store(ds, WaveformConfig(), jobs=1, progress=False)
    # the CLI shows the hint as the command, with the failure budget that lets this run pass
    assert "or allow more: `audiocnn features ds --kind waveform --max-failures 0.28`" in commands_in(str(err.value))
    st = open_dataset_store(ds, WaveformConfig(), jobs=2, progress=False, max_failure_fraction=0.28, chunk_clips=3)
    failures = {f["id"]: f["reason"] for f in st.failures()}
    assert set(failures) == {"corrupt", "empty", "short"}
    assert "empty file" in failures["empty"]
    assert "not a readable audio file" in failures["corrupt"] or "decod" in failures["corrupt"]
    assert "too short" in failures["short"] and "0.30s" in failures["short"]
    assert "short" not in st.clip_ids("train") and "a" in st.clip_ids("train")
    assert sum(st.num_clips(s) for s in st.splits) == len(CLIPS)
    assert st.summary["failures"] == 3


def test_idempotent_new_store_per_config_and_stale_manifest(tmp_path, audio_files, monkeypatch) -> None:
    ds = make_mixed_dataset(tmp_path / "ds", audio_root=audio_files, clips=CLIPS[:3])
    first = open_dataset_store(ds, default_frontend("mel"), jobs=1, progress=False)
    stamp = (first.path / "complete.json").stat().st_mtime_ns

    def must_not_run(*a, **k):
        raise AssertionError("a finished store must not be extracted again")

    monkeypatch.setattr(extract_mod, "_run_tasks", must_not_run)
    again = open_dataset_store(ds, default_frontend("mel"), jobs=1, progress=False)
    assert (again.path / "complete.json").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    monkeypatch.setattr(chunks_mod, "_BLOCK_SECONDS", 0.3)
    other = open_dataset_store(ds, MelConfig(n_mels=40), jobs=1, progress=False)
    assert other.path != first.path and other.read("train", 0).shape[0] == 40
    assert first.read("train", 0).shape[0] == 96
    # the dataset is re-prepared with another clip: the old store is stale
    make_mixed_dataset(ds, audio_root=audio_files, clips=CLIPS[:4])
    with pytest.raises(FeatureError, match="manifest changed"):
        open_store(ds, default_frontend("mel"), fingerprint=manifest_fingerprint(read_manifest(ds)))
    st = open_dataset_store(ds, default_frontend("mel"), jobs=1, progress=False)
    assert st.clip_ids("train") == ["a", "b", "d"]


def test_open_store_missing_names_the_command(tmp_path) -> None:
    ds = tmp_path / "gtzan"
    with pytest.raises(FeatureError) as err:
        open_store(ds, MelConfig(sample_rate=22050, n_mels=128))
    msg = str(err.value)
    assert "does not exist" in msg
    assert "`features('gtzan', kind='mel', sample_rate=22050, overrides=['n_mels=128'])`" in msg
    # what the CLI prints (audiocnn.cli.main shows every next call as its command)
    assert "`audiocnn features gtzan --kind mel --sample-rate 22050 --set n_mels=128`" in commands_in(msg)


def test_store_is_picklable_and_multilabel_targets(tmp_path, audio_files) -> None:
    import pickle

    ds = make_mixed_dataset(tmp_path / "ds", audio_root=audio_files, task="multi-label")
    st = open_dataset_store(ds, WaveformConfig(), jobs=1, progress=False)
    t = st.targets("train")
    manifest = read_manifest(ds)
    assert t.dtype == np.float32 and t.shape == (4, 3)
    for row, clip in zip(t, manifest.split("train"), strict=True):
        assert sorted(np.flatnonzero(row)) == manifest.targets(clip)
    st.read("train", 0)  # opens a memory map
    copy = pickle.loads(pickle.dumps(st))
    assert isinstance(copy, FeatureStore)
    np.testing.assert_array_equal(copy.read("train", 1), st.read("train", 1))


def test_cli_features_both(data_dir, audio_files, capsys) -> None:
    make_mixed_dataset(data_dir / "toy", audio_root=audio_files, clips=CLIPS[:4])
    code = run(
        ["features", "toy", "--kind", "both", "-j", "1", "--set", "n_mels=32", "--no-progress", "--format", "json"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert [r["kind"] for r in out] == ["waveform", "mel"]
    assert out[1]["path"] == str(store_dir(data_dir / "toy", MelConfig(n_mels=32)))
    assert out[0]["clips"] == {"train": 3, "valid": 1, "test": 0}
    assert out[0]["failures"] == 0
    assert run(["features", "toy", "--kind", "mel", "--set", "n_mels=32"]) == 0
    text = capsys.readouterr().out
    assert "mel: " in text and "train 3, valid 1, test 0; failed: 0" in text
    assert run(["features", "toy", "--kind", "waveform", "--set", "n_mels=32"]) == 2
    assert "not a waveform front-end option" in capsys.readouterr().err
    assert run(["features", "missing", "--kind", "mel"]) == 1
    assert "audiocnn prepare missing" in capsys.readouterr().err


def test_store_write_error_aborts_instead_of_blaming_clips(tmp_path, audio_files, monkeypatch) -> None:
    ds = make_mixed_dataset(tmp_path / "ds", audio_root=audio_files, clips=CLIPS[:2])

    def disk_full(fh, data):
        raise chunks_mod.StoreWriteError(f"{fh.name}: cannot write the feature store (No space left on device)")

    monkeypatch.setattr(chunks_mod, "_write", disk_full)
    with pytest.raises(FeatureError, match="No space left"):
        open_dataset_store(ds, WaveformConfig(), jobs=1, progress=False)
    assert not list((store_dir(ds, WaveformConfig()) / "parts").glob("*.json"))


def test_extract_from_a_plain_clip_list(tmp_path, audio_files) -> None:
    """The store needs no manifest: clips, label indices and a fingerprint are enough."""
    clips = (
        StoreClip("a", str(audio_files / "a.wav"), "train", (2,)),
        StoreClip("e", str(audio_files / "e.wav"), "test", (0, 1)),
        StoreClip("b", str(audio_files / "b.flac"), "train", (1,)),
    )
    source = StoreSource(name="plain", task="multi-label", labels=("x", "y", "z"), clips=clips, fingerprint="f1")
    st = extract_features(tmp_path, WaveformConfig(), source, jobs=1, progress=False)
    assert st.path == store_dir(tmp_path, WaveformConfig())
    assert st.clip_ids("train") == ["a", "b"] and st.clip_ids("test") == ["e"] and st.num_clips("valid") == 0
    np.testing.assert_array_equal(st.targets("train"), [[0, 0, 1], [0, 1, 0]])
    assert st.meta["manifest_fingerprint"] == "f1" and st.meta["dataset"] == "plain"
    assert open_store(tmp_path, WaveformConfig(), fingerprint="f1").clip_ids("test") == ["e"]
    with pytest.raises(FeatureError, match="manifest changed"):
        open_store(tmp_path, WaveformConfig(), fingerprint="f2")
    again = extract_features(
        tmp_path, WaveformConfig(), dataclasses.replace(source, fingerprint="f2"), jobs=1, progress=False
    )
    assert again.meta["manifest_fingerprint"] == "f2"


def test_a_clip_name_that_is_not_utf8_is_extracted_and_kept(tmp_path, audio_files) -> None:
    """A folder dataset may hold names that are not UTF-8 (POSIX names are bytes): the store
    writes them as ``\\udcXX`` escapes and reads back the same id, and so does a failure."""
    raw = tmp_path / "raw"
    raw.mkdir()
    odd = os.fsdecode(os.fsencode(raw) + b"/bad\xff\xfe.wav")
    shutil.copyfile(audio_files / "a.wav", os.fsencode(odd))
    (raw / "broken.wav").write_bytes(b"RIFF\x00\x00")
    clips = (
        StoreClip(Path(odd).stem, odd, "train", (0,)),
        StoreClip("e", str(audio_files / "e.wav"), "train", (1,)),
        StoreClip("broken\udcff", str(raw / "broken.wav"), "train", (1,)),
    )
    source = StoreSource(name="odd", task="single-label", labels=("x", "y"), clips=clips, fingerprint="f1")
    st = extract_features(tmp_path, WaveformConfig(), source, jobs=1, progress=False, max_failure_fraction=0.5)
    assert st.clip_ids("train") == ["bad\udcff\udcfe", "e"]
    failed = [json.loads(x) for x in (st.path / "failures.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [f["id"] for f in failed] == ["broken\udcff"]
