"""A small prepared dataset in every container audiocnn decodes, for the feature store's
tests (one process and sharded): WAV, FLAC, Ogg/Vorbis and MP3 (MPEG-1 and MPEG-2) at several rates
and channel counts, with a manifest in the real format."""

from __future__ import annotations

from pathlib import Path

from audiocnn.datasets.manifest import Clip, Manifest, write_manifest
from audiocnn.testing.audio import synth_tone, write_audio

# (name, seconds, native rate, channels, container): a mix of rates, channel counts and
# containers, including MPEG-2 MP3s (22.05/16 kHz) decoded across several blocks.
CLIPS = [
    ("a", 2.0, 22050, 1, "wav"),
    ("b", 3.1, 44100, 2, "flac"),
    ("c", 2.6, 22050, 1, "mp3"),
    ("d", 1.7, 16000, 1, "mp3"),
    ("e", 2.2, 16000, 2, "wav"),
    ("f", 4.3, 48000, 1, "ogg"),
    ("g", 1.2, 22050, 2, "wav"),
    ("h", 2.9, 44100, 1, "mp3"),
]
SPLIT = ["train", "train", "valid", "train", "test", "train", "valid", "test"]
LABELS = ["rock", "jazz", "pop"]


def make_mixed_dataset(
    root: Path,
    *,
    task: str = "single-label",
    clips=CLIPS,
    audio_root: Path | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write audio (unless ``audio_root`` points at existing files) and a manifest."""
    raw = audio_root or root / "raw"
    records = []
    for k, (name, seconds, sr, ch, ext) in enumerate(clips):
        fname = f"{name}.{ext}"
        if audio_root is None:
            kw = {"format": "OGG", "subtype": "VORBIS"} if ext == "ogg" else {}
            kw = {"format": "MP3"} if ext == "mp3" else kw
            write_audio(raw / fname, synth_tone(seconds, sr, channels=ch, seed=k), sr, **kw)
        labels = [LABELS[k % 3]] if task == "single-label" else [LABELS[j] for j in range(3) if (k >> j) & 1]
        records.append(
            Clip(id=name, path=fname, duration=seconds, sample_rate=sr, labels=labels, split=SPLIT[k % len(SPLIT)])
        )
    for fname, data in (extra_files or {}).items():
        (raw / fname).write_bytes(data)
        records.append(
            Clip(id=Path(fname).stem, path=fname, duration=1.0, sample_rate=22050, labels=[LABELS[0]], split="train")
        )
    m = Manifest(
        name=root.name,
        dataset="folder",
        task=task,
        labels=LABELS,
        clips=records,
        audio_root=str(raw) if audio_root else "raw",
    )
    write_manifest(m, root)
    return root
