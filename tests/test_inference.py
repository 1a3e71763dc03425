"""Whole-song tagging: windowing, aggregation, song framing, bounded memory, devices."""

from __future__ import annotations

import dataclasses
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synth_tone, write_audio
from tag_fixtures import SR, make_checkpoint

from audiocnn.devices import resolve_device
from audiocnn.errors import AudioDecodeError, CheckpointError, DeviceError, ModelError, UsageError
from audiocnn.features.frontends import MelConfig
from audiocnn.pretrained import resolve_model
from audiocnn.tagging import Tagger, TagOptions, expand_audio_paths, tag_command

torch.set_num_threads(1)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "wave": make_checkpoint(d / "wave.safetensors", "test-probe-wave", labels=["mean", "power"]),
        "mel": make_checkpoint(d / "mel.safetensors", "test-probe-mel"),
        "mel1": make_checkpoint(d / "mel1.safetensors", "test-probe-mel", task="single-label", seed=3),
        "reflect": make_checkpoint(
            d / "reflect.safetensors",
            "test-probe-mel",
            frontend=MelConfig(
                sample_rate=SR, n_fft=256, hop_length=128, n_mels=16, compression="db", pad_mode="reflect"
            ),
        ),
        "fixed": make_checkpoint(d / "fixed.safetensors", "test-fixed-mel", labels=["a", "b"]),
    }


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """4 s of a constant level per half second: window means are known exactly."""
    levels = np.array([0.1, -0.2, 0.3, 0.05, -0.4, 0.25, 0.0, 0.15], dtype=np.float32)
    y = np.repeat(levels, SR // 2)
    path = write_audio(tmp_path_factory.mktemp("steps") / "steps.wav", y, SR, subtype="FLOAT")
    return path, levels


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    """A 7.3 s chord at 22.05 kHz (resampled to the model's 8 kHz on decode)."""
    return write_audio(tmp_path_factory.mktemp("song") / "song.wav", synth_tone(7.3, 22050, seed=5), 22050)


def test_windows_hop_and_aggregates_follow_the_audio(ckpts, steps):
    path, levels = steps
    t = Tagger(ckpts["wave"], device="cpu", batch_size=4)
    r = t.tag_file(path, hop=0.5, taggram=True)
    # 1 s windows every 0.5 s over 4 s: starts 0, 0.5, ..., 3.0 -> 7 windows, each two levels
    assert r.framing == "window" and r.num_windows == 7 and r.taggram.shape == (7, 2)
    expect_mean = (levels[:-1] + levels[1:]) / 2
    expect_power = (levels[:-1] ** 2 + levels[1:] ** 2) / 2
    np.testing.assert_allclose(r.taggram[:, 0], _sigmoid(expect_mean), atol=1e-6)
    np.testing.assert_allclose(r.taggram[:, 1], _sigmoid(expect_power), atol=1e-6)
    np.testing.assert_allclose(r.window_starts, np.arange(7) * 0.5)
    np.testing.assert_allclose(r.scores, r.taggram.mean(axis=0), atol=1e-7)
    r_max = t.tag_file(path, hop=0.5, aggregate="max")
    np.testing.assert_allclose(r_max.scores, [_sigmoid(expect_mean.max()), _sigmoid(expect_power.max())], atol=1e-6)
    assert r.activation == "sigmoid" and r.duration == pytest.approx(4.0)
    # default hop = window: no overlap; a hop larger than the window skips audio
    assert t.tag_file(path).num_windows == 4
    gap = t.tag_file(path, window=0.5, hop=1.5, taggram=True, tail="drop")
    np.testing.assert_allclose(gap.taggram[:, 0], _sigmoid(levels[[0, 3, 6]]), atol=1e-6)
    end = t.tag_file(path, window=0.5, hop=1.5, taggram=True)  # one more window ends at the end
    np.testing.assert_allclose(end.taggram[:, 0], _sigmoid(levels[[0, 3, 6, 7]]), atol=1e-6)


def test_evidence_only_in_the_last_second_is_tagged(ckpts, tmp_path):
    """Every second counts: after the last full window, one more ends at the end of the
    audio (overlapping the one before), in window and song framing; tail="drop" scores
    only full windows, as musicnn does (the tail was ignored: a 4 s clip, one 3 s window)."""
    y = np.zeros(int(2.5 * SR), np.float32)
    y[2 * SR :] = 0.5  # silence, then sound in the last half second only
    clip = write_audio(tmp_path / "tail.wav", y, SR, subtype="FLOAT")
    t = Tagger(ckpts["wave"], device="cpu")
    r = t.tag_file(clip, taggram=True)
    np.testing.assert_allclose(r.window_starts, [0.0, 1.0, 1.5])  # 1 s windows, the last ends at 2.5 s
    np.testing.assert_allclose(r.taggram[:, 1], _sigmoid([0.0, 0.0, 0.5 * 0.25]), atol=1e-6)  # the "power" tag
    assert r.scores[1] > 0.51
    drop = t.tag_file(clip, tail="drop")
    assert drop.num_windows == 2 and drop.scores[1] == pytest.approx(0.5)  # silence only
    m = Tagger(ckpts["mel"], device="cpu", block_seconds=0.3)
    frames = m.model.frontend_config.num_frames(len(y))
    r, drop = m.tag_file(clip, taggram=True), m.tag_file(clip, taggram=True, tail="drop")
    unit = m.model.frontend_config.hop_length / SR
    size = m.model.input_frames
    assert frames % size and r.framing == "song" and r.num_windows == drop.num_windows + 1
    assert round(r.window_starts[-1] / unit) + size == frames  # the last patch ends at the last frame
    assert np.abs(r.taggram[-1] - drop.taggram[-1]).max() > 1e-3
    with pytest.raises(UsageError, match="tail"):
        TagOptions(tail="pad")


def test_tags_sorted_top_k_and_single_label_softmax(ckpts, song):
    t = Tagger(ckpts["mel1"], device="cpu")
    r = t.tag_file(song, top_k=2, taggram=True)
    assert r.task == "single-label" and r.activation == "softmax"
    np.testing.assert_allclose(r.taggram.sum(axis=1), 1.0, atol=1e-5)
    assert len(r.tags) == 2 and r.tags[0][1] >= r.tags[1][1]
    best = int(np.argmax(r.scores))
    assert r.tags[0] == (r.labels[best], pytest.approx(float(r.scores[best])))
    assert r.scores.shape == (4,) and abs(float(r.scores.sum()) - 1.0) < 1e-5


def test_song_framing_equals_whole_song_mel_cut_into_patches(ckpts, song):
    """Block-wise mel (tiny blocks, many boundaries) == front-end on the whole song, patched."""
    from audiocnn.audio import load_audio

    for key in ("mel", "reflect"):
        t = Tagger(ckpts[key], device="cpu", batch_size=3, block_seconds=0.37)
        y = torch.from_numpy(load_audio(song, SR))[None]
        with torch.no_grad():
            whole = t.model.frontend(y)[0].numpy()  # (n_mels, frames)
        unit = t.model.frontend_config.hop_length / SR
        to_the_end = (whole.shape[1] - t.model.input_frames) / 2 * unit  # last window ends at the last frame
        for hop, tail in [(None, "drop"), (0.4, "drop"), (to_the_end, "drop"), (None, "end"), (0.4, "end")]:
            r = t.tag_file(song, hop=hop, taggram=True, embeddings=True, tail=tail)
            plan = t.plan(TagOptions(hop=hop))
            assert r.framing == "song" and plan.size == t.model.input_frames
            starts = range(0, whole.shape[1] - plan.size + 1, plan.hop)
            if tail == "end":  # one more patch, ending at the last frame
                starts = [*starts, whole.shape[1] - plan.size]
            patches = np.stack([whole[:, s : s + plan.size] for s in starts])
            assert r.num_windows == len(patches) >= 3
            if hop == to_the_end:
                assert starts[-1] + plan.size == whole.shape[1]
            np.testing.assert_allclose(r.embeddings, patches.mean(axis=-1), atol=2e-5, rtol=1e-5)
            with torch.no_grad():
                ref = t.model.predict_proba(t.model(torch.from_numpy(patches), from_features=True)).numpy()
            np.testing.assert_allclose(r.taggram, ref, atol=1e-5)
            assert t.stats.max_block_samples <= 2 * 0.37 * SR  # the resampler's chunks vary a little


def test_window_framing_runs_the_front_end_per_window(ckpts, song):
    from audiocnn.audio import load_audio

    t = Tagger(ckpts["mel"], device="cpu")
    r = t.tag_file(song, framing="window", embeddings=True, tail="drop")
    y = load_audio(song, SR)
    n = t.model.input_length
    wins = np.stack([y[s : s + n] for s in range(0, len(y) - n + 1, n)])
    with torch.no_grad():
        emb = t.model.embed(torch.from_numpy(wins)).numpy()
    assert r.framing == "window" and r.num_windows == len(wins)
    np.testing.assert_allclose(r.embeddings, emb, atol=1e-5)


def test_results_do_not_depend_on_batch_size(ckpts, song):
    a = Tagger(ckpts["mel"], device="cpu", batch_size=1).tag_file(song, hop=0.25, taggram=True)
    b = Tagger(ckpts["mel"], device="cpu", batch_size=7).tag_file(song, hop=0.25, taggram=True)
    assert a.num_windows == b.num_windows > 20
    np.testing.assert_allclose(a.taggram, b.taggram, atol=1e-6)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_short_song_is_padded_to_one_window(ckpts, tmp_path):
    short = write_audio(tmp_path / "short.wav", synth_tone(0.3, SR), SR)
    for key in ("wave", "mel", "fixed"):
        r = Tagger(ckpts[key], device="cpu").tag_file(short, taggram=True)
        assert r.num_windows == 1 and r.padded and r.duration == pytest.approx(0.3)
        assert np.isfinite(r.taggram).all()
    # zero-padding the audio itself gives the same scores as the padded song
    y = np.zeros(SR, np.float32)
    y[: int(0.3 * SR)] = synth_tone(0.3, SR)
    full = write_audio(tmp_path / "padded.wav", y, SR, subtype="FLOAT")
    t = Tagger(ckpts["wave"], device="cpu")
    np.testing.assert_allclose(t.tag_file(short).scores, t.tag_file(full).scores, atol=1e-4)
    assert not t.tag_file(full).padded


def test_long_song_is_tagged_with_bounded_memory(ckpts, tmp_path):
    """10 minutes of audio (19 MB as float32) never sits in memory: peak numpy use stays
    a small multiple of one decode block."""
    n = 600 * SR
    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(n)).astype(np.float32)
    path = write_audio(tmp_path / "long.wav", y, SR, subtype="PCM_16")
    del y
    t = Tagger(ckpts["mel"], device="cpu", batch_size=8, block_seconds=2.0)
    tracemalloc.start()
    try:
        r = t.tag_file(path, taggram=True, tail="drop")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    frames = t.model.frontend_config.num_frames(n)
    assert r.num_windows == frames // t.model.input_frames and r.duration == pytest.approx(600.0)
    assert t.stats.blocks >= 300 and t.stats.max_block_samples <= 2 * SR
    assert t.stats.max_batch <= 8
    block_frames = 2 * SR // 128 + 2
    assert t.stats.max_buffered <= 2 * SR + 256  # samples of the mel stream or frames of the windower
    assert block_frames + t.model.input_frames < 2 * SR
    assert peak < 3_000_000, f"peak traced memory {peak} bytes for a 19 MB song"


def test_custom_window_on_a_fixed_length_model_is_one_clear_error(ckpts, song):
    t = Tagger(ckpts["fixed"], device="cpu")
    assert t.tag_file(song, tail="drop").num_windows == 14  # native 0.5 s windows work
    with pytest.raises(ModelError, match="cannot take windows"):
        t.tag_file(song, window=1.0)


def test_bad_arguments_are_usage_errors(ckpts, song):
    t = Tagger(ckpts["wave"], device="cpu")
    with pytest.raises(UsageError, match="aggregate"):
        t.tag_file(song, aggregate="median")
    with pytest.raises(UsageError, match="window"):
        t.tag_file(song, window=0)
    with pytest.raises(UsageError, match="hop"):
        t.tag_file(song, hop=-1)
    with pytest.raises(UsageError, match="song framing"):
        t.tag_file(song, framing="song")
    with pytest.raises(UsageError, match="batch_size"):
        Tagger(ckpts["wave"], batch_size=0)


def test_corrupt_and_missing_files(ckpts, song, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    t = Tagger(ckpts["mel"], device="cpu")
    with pytest.raises(AudioDecodeError, match="bad.wav"):
        t.tag_file(bad)
    out = list(t.tag_files([bad, song, tmp_path / "gone.mp3"]))
    assert [type(r).__name__ for _, r in out] == ["AudioDecodeError", "TagResult", "AudioDecodeError"]


def test_checkpoint_resolution(ckpts, tmp_path):
    data = tmp_path / "data"
    assert resolve_model(ckpts["mel"], cache_dir=data) == ckpts["mel"]
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_model(tmp_path / "nope.safetensors", cache_dir=data)
    with pytest.raises(CheckpointError, match="no best.safetensors"):
        resolve_model(tmp_path, cache_dir=data)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.safetensors").write_bytes(ckpts["mel"].read_bytes())
    assert resolve_model(run_dir, cache_dir=data) == run_dir / "best.safetensors"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        Tagger(junk, device="cpu")


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(DeviceError):
            resolve_device("cuda:1")
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        with pytest.raises(DeviceError, match="MPS"):
            resolve_device("mps")
    with pytest.raises(DeviceError, match="expected one of"):
        resolve_device("tpu")


def test_expand_paths_files_folders_globs(tmp_path):
    a = write_audio(tmp_path / "a" / "one.wav", synth_tone(0.1, SR), SR)
    b = write_audio(tmp_path / "a" / "deep" / "two.flac", synth_tone(0.1, SR), SR)
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    files, problems = expand_audio_paths(
        [
            str(tmp_path / "a"),
            str(tmp_path / "a" / "*.wav"),
            str(tmp_path / "nope.wav"),
            str(tmp_path / "empty"),
            str(tmp_path / "*.ogg"),
        ]
    )
    assert files == [b, a]  # sorted, deduplicated, recursive, audio only
    assert len(problems) == 3 and "nope.wav" in problems[0] and "no audio" in problems[1]


def test_expand_paths_skips_hidden_files_in_folders_but_not_named_ones(tmp_path):
    music = tmp_path / "music"
    kept = write_audio(music / "one.wav", synth_tone(0.1, SR), SR)
    fork = write_audio(music / "._one.wav", synth_tone(0.1, SR), SR)  # what macOS leaves on other disks
    stash = write_audio(music / ".stash" / "two.wav", synth_tone(0.1, SR), SR)
    assert expand_audio_paths([str(music)]) == ([kept], [])
    assert expand_audio_paths([str(music / "*.wav")]) == ([kept], [])  # globs skip hidden names too
    assert expand_audio_paths([str(fork), str(music / ".stash")]) == ([fork, stash], [])  # asked for by name


def test_tag_command_runs_the_whole_tag_command(ckpts, song, tmp_path):
    """What `audiocnn tag` does, without printing: results and files per song, one error
    line per failed input, a summary that counts them, option errors before the first song."""
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    seen, lines = [], []
    summary = tag_command(
        [song, bad, tmp_path / "gone.wav"],
        model=ckpts["mel"],
        device="cpu",
        top_k=2,
        outputs={"taggram": tmp_path / "tg"},
        on_result=seen.append,
        report=lines.append,
    )
    assert [o.path for o in seen] == [song] and len(seen[0].result.tags) == 2
    assert seen[0].files == {"taggram": tmp_path / "tg" / "song.taggram.npy"} and seen[0].files["taggram"].is_file()
    assert (summary.total, summary.failed) == (3, 2) and str(summary).startswith("tagged 1 of 3 files in ")
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 2 and "gone.wav" in errors[0] and "bad.wav" in errors[1]
    with pytest.raises(UsageError, match="nothing to tag"):
        tag_command([tmp_path / "gone.wav"], model=ckpts["mel"], report=lines.append)
    with pytest.raises(UsageError, match="aggregate"):
        tag_command([song], model=ckpts["mel"], device="cpu", aggregate="median", on_result=seen.append)
    assert len(seen) == 1


def test_stats_record_blocks(ckpts, song):
    t = Tagger(ckpts["wave"], device="cpu", block_seconds=1.0)
    t.tag_file(song)
    assert t.stats.blocks >= 7 and dataclasses.asdict(t.stats)["max_batch"] >= 1
