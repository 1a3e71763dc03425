"""Decoding: every format, librosa agreement, seeking, and every bad-input case."""

from __future__ import annotations

import os
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

import audiocnn
from audiocnn.audio import audio_info, find_audio_files, iter_audio_blocks, load_audio
from audiocnn.errors import AudioDecodeError
from audiocnn.testing.audio import synth_tone, write_audio

ALL_FILES = [
    "mono22k.wav",
    "stereo44k.wav",
    "mono22k.au",
    "stereo44k.flac",
    "mono22k.ogg",
    "stereo48k.opus",
    "stereo44k.mp3",
    "mono16k.mp3",
]


@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.parametrize("sr", [16000, 22050])
def test_matches_librosa(audio_dir: Path, name: str, sr: int) -> None:
    ours = audiocnn.load_audio(audio_dir / name, sr)
    ref, _ = librosa.load(audio_dir / name, sr=sr, mono=True)
    assert ours.dtype == np.float32 and ours.ndim == 1
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) < 1e-4
    assert np.abs(ours).max() > 0.05  # real signal, not silence


@pytest.mark.parametrize("name", ["stereo44k.wav", "stereo44k.flac", "stereo44k.mp3"])
def test_offset_duration_match_librosa(audio_dir: Path, name: str) -> None:
    ours = load_audio(audio_dir / name, 16000, offset=0.75, duration=1.2)
    ref, _ = librosa.load(audio_dir / name, sr=16000, offset=0.75, duration=1.2)
    assert ours.shape == ref.shape == (int(np.ceil(int(1.2 * 44100) * 16000 / 44100)),)
    assert np.max(np.abs(ours - ref)) < 1e-4


def test_offset_reads_only_what_is_needed(audio_dir: Path, monkeypatch) -> None:
    calls: list[tuple[str, int]] = []
    seek, read = sf.SoundFile.seek, sf.SoundFile.read

    def spy_seek(self, frames, *a, **k):
        calls.append(("seek", frames))
        return seek(self, frames, *a, **k)

    def spy_read(self, frames=-1, *a, **k):
        calls.append(("read", frames))
        return read(self, frames, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "seek", spy_seek)
    monkeypatch.setattr(sf.SoundFile, "read", spy_read)
    y = load_audio(audio_dir / "stereo44k.flac", None, offset=2.0, duration=0.5)
    reads = [c for c in calls if c[0] == "read"]
    assert calls[0] == ("seek", 88200)  # jumped straight to the offset
    assert reads == [("read", 22050)]  # and decoded only the requested frames
    assert y.shape == (22050,)


def test_native_rate_and_multichannel(audio_dir: Path) -> None:
    y = load_audio(audio_dir / "stereo44k.flac", None, mono=False)
    data, sr = sf.read(audio_dir / "stereo44k.flac", dtype="float32")
    assert sr == 44100 and y.shape == (2, data.shape[0])
    np.testing.assert_array_equal(y, data.T)
    m = load_audio(audio_dir / "stereo44k.flac", None)
    np.testing.assert_allclose(m, data.mean(axis=1), atol=1e-7)
    y16 = load_audio(audio_dir / "stereo44k.flac", 16000, mono=False)
    assert y16.shape == (2, int(np.ceil(data.shape[0] * 16000 / 44100)))


def test_audio_info(audio_dir: Path) -> None:
    info = audio_info(audio_dir / "stereo44k.flac")
    assert (info.sample_rate, info.channels, info.frames) == (44100, 2, 132300)
    assert info.duration == pytest.approx(3.0)


def test_blocks_equal_whole_file(audio_dir: Path) -> None:
    whole = load_audio(audio_dir / "stereo44k.wav", 16000)
    blocks = list(iter_audio_blocks(audio_dir / "stereo44k.wav", 16000, block_seconds=0.7))
    assert len(blocks) >= 4
    joined = np.concatenate(blocks)
    assert joined.shape == whole.shape
    # Streaming resampling differs from one-shot only at numerical-noise level.
    assert np.max(np.abs(joined - whole)) < 1e-4


def _expect_error(path: Path, fragment: str) -> None:
    with pytest.raises(AudioDecodeError) as err:
        load_audio(path, 16000)
    msg = str(err.value)
    assert str(path) in msg and fragment in msg
    assert "\n" not in msg


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.wav", "no such file")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.mp3"
    p.write_bytes(b"")
    _expect_error(p, "empty file")


def test_zero_length_audio(tmp_path: Path) -> None:
    p = write_audio(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 22050)
    _expect_error(p, "no audio samples")


def test_non_audio(tmp_path: Path) -> None:
    p = tmp_path / "notes.mp3"
    p.write_text("this is a text file, not an mp3\n" * 20)
    _expect_error(p, "not a readable audio file")


def test_directory(tmp_path: Path) -> None:
    _expect_error(tmp_path, "is a directory")


@pytest.mark.parametrize(
    "ext,kw,fragment",
    [
        ("wav", {}, "truncated"),
        ("au", {"format": "AU", "subtype": "PCM_16"}, "truncated"),
        ("flac", {}, "truncated or corrupt"),
        ("mp3", {"format": "MP3"}, "truncated"),
    ],
)
def test_truncated(tmp_path: Path, ext: str, kw: dict, fragment: str) -> None:
    full = write_audio(tmp_path / f"full.{ext}", synth_tone(3.0, 22050), 22050, **kw)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    _expect_error(cut, fragment)


def test_offset_past_end(audio_dir: Path) -> None:
    with pytest.raises(AudioDecodeError, match="past the end"):
        load_audio(audio_dir / "mono22k.wav", 16000, offset=10.0)


def test_public_api() -> None:
    assert audiocnn.load_audio is load_audio
    assert isinstance(audiocnn.__version__, str)


@pytest.mark.parametrize("sr", [22050, 11025, 16000, 44100])
def test_mp3_offsets_and_blocks_are_sample_exact(tmp_path: Path, sr: int) -> None:
    """libsndfile returns wrong samples after reads/seeks that end inside an MPEG frame at
    22.05/11.025 kHz; our reads stay on frame boundaries, so slices equal the whole file."""
    p = write_audio(tmp_path / f"x{sr}.mp3", synth_tone(12.0, sr, seed=4), sr, format="MP3")
    whole = load_audio(p, None)
    for off, dur in ((1.0, 1.0), (0.3337, 2.71), (5.5, None)):
        part = load_audio(p, None, offset=off, duration=dur)
        s0 = int(off * sr)
        e = s0 + (int(dur * sr) if dur else len(whole) - s0)
        assert np.max(np.abs(part - whole[s0:e])) < 1e-6, (off, dur)
    joined = np.concatenate(list(iter_audio_blocks(p, sr, block_seconds=2.0)))
    assert joined.shape == whole.shape
    assert np.max(np.abs(joined - whole)) < 1e-6


# ----------------------------------------------------------------------------- finding files


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")  # the finder goes by name, it does not decode


def test_find_audio_files_skips_hidden_names_and_sorts_folder_by_folder(tmp_path: Path) -> None:
    root = tmp_path / ".music"  # the folder asked for may itself be hidden
    _touch(
        root / "b.wav",
        root / "A.FLAC",
        root / "a" / "z.mp3",
        root / "a-c" / "x.ogg",
        root / "a" / "deep" / "y.opus",
        root / "notes.txt",
        root / "cover.jpg",
        root / "noext",
        root / "._b.wav",  # macOS resource-fork copy: not audio despite its extension
        root / ".DS_Store",
        root / ".cache" / "c.wav",
        root / "a" / ".git" / "d.mp3",
    )
    found = find_audio_files(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "A.FLAC",
        "a/deep/y.opus",
        "a/z.mp3",
        "a-c/x.ogg",
        "b.wav",
    ]
    assert all(root in p.parents for p in found)  # as found, not resolved
    assert find_audio_files(str(root)) == found  # a str works as well as a Path
    assert find_audio_files(tmp_path / "missing") == [] and find_audio_files(root / "cover.jpg") == []


def test_find_audio_files_counts_linked_files_but_does_not_enter_linked_folders(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "music", tmp_path / "elsewhere"
    _touch(root / "rock" / "own.wav", elsewhere / "far.wav", elsewhere / "sub" / "deeper.wav")
    (root / "rock" / "alias.wav").symlink_to(elsewhere / "far.wav")  # a link to a file: a file
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # a linked folder: not entered
    (root / "rock" / "broken.wav").symlink_to(tmp_path / "gone.wav")  # leads nowhere: skipped
    assert [p.relative_to(root).as_posix() for p in find_audio_files(root)] == ["rock/alias.wav", "rock/own.wav"]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("zeros.au", bytes(1 << 20)),  # libsndfile: headerless 8 kHz mu-law, "a 131 s song"
        ("random.snd", np.random.default_rng(0).bytes(1 << 20)),
        ("notes.au", b"not audio, just text\n" * 150),  # was "the header promises 3150 frames"
    ],
)
def test_not_audio_named_like_audio_is_refused(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    for read in (audio_info, lambda p: load_audio(p, 16000), lambda p: next(iter_audio_blocks(p, 16000))):
        with pytest.raises(AudioDecodeError, match=r"not a readable audio file \(no audio header") as err:
            read(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_real_au_header_is_still_read(audio_dir: Path) -> None:
    assert (audio_dir / "mono22k.au").read_bytes()[:4] == b".snd"
    assert audio_info(audio_dir / "mono22k.au").frames == 3 * 22050


def test_fifo_and_device_are_not_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a device")):
        with pytest.raises(AudioDecodeError, match=f"not a regular file \\({kind}\\)"):
            load_audio(path, 16000)


def test_a_file_name_that_is_not_utf8_decodes(tmp_path: Path) -> None:
    """POSIX names are bytes; Python holds the undecodable ones as surrogate escapes."""
    good = write_audio(tmp_path / "good.wav", synth_tone(1.0, 16000), 16000)
    bad = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff\xfe.wav")
    os.rename(good, os.fsencode(bad))
    assert audio_info(bad).frames == 16000
    assert load_audio(bad, 8000).shape == (8000,)
