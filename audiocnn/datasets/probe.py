"""Decode checks run in worker processes: cheap to import (soundfile + numpy only).

A clip is accepted only when every frame decodes to finite samples; its size, decoded
frame count and sha256 become the manifest's integrity record, which ``verify`` re-checks
(the digest with ``--full``: a clip replaced by another of the same size and length is
caught there). The digest reads the file once more right after decoding it, from the page
cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import soundfile as sf

from audiocnn import workers
from audiocnn.audio import audio_info, soundfile_name
from audiocnn.datasets.checksums import file_digest
from audiocnn.errors import AudioDecodeError
from audiocnn.progress import progress_bar

WHOLE_FILE_FRAMES = 1 << 22
# libsndfile's MP3 decoder goes wrong at a block edge that does not fall on an MPEG
# frame boundary (576 samples per frame in MPEG-2 at 16/22.05/24 kHz), so blocks are a
# whole number of 1152-sample frames.
BLOCK_FRAMES = 1152 * 256  # ~6.7 s at 44.1 kHz, 2.4 MB for stereo float32
WHOLE_FILE_FRAMES = 1 << 22
# libsndfile's MP3 frame count is estimated from the stream; allow this much disagreement.
MP3_FRAME_SLACK = 1152 * 4


def _strip(path: str, message: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def decode_frames(path: str) -> tuple[int, int, int, str]:
    """Decode the whole file block by block; return (frames, sample_rate, channels, format).

    Memory stays at one block whatever the length (fma-full tracks run to many minutes).
    """
    info = audio_info(path)  # raises AudioDecodeError for missing/empty/unreadable files
    frames = 0
    # Clips up to ~95 s at 44.1 kHz are read in one go (no block edges at all); longer
    # files block by block so memory stays bounded.
    block_frames = -1 if info.frames <= WHOLE_FILE_FRAMES else BLOCK_FRAMES
    try:
        with sf.SoundFile(soundfile_name(path)) as f:
            while True:
                block = f.read(block_frames, dtype="float32", always_2d=True)
                n = block.shape[0]
                if n == 0:
                    break
                if not np.isfinite(block).all():
                    raise AudioDecodeError(f"{path}: decoded samples contain NaN or infinity")
                frames += n
                if block_frames < 0 or n < block_frames:
                    break
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioDecodeError(f"{path}: decoding failed after {frames} frames ({exc})") from None
    if frames == 0:
        raise AudioDecodeError(f"{path}: contains no audio samples")
    slack = MP3_FRAME_SLACK if info.format == "MPEG" else 0
    if info.frames - frames > slack:
        raise AudioDecodeError(f"{path}: truncated: the header promises {info.frames} frames, only {frames} decode")
    return frames, info.sample_rate, info.channels, info.format


def probe_clip(path: str) -> dict[str, Any]:
    """``{"ok": True, size, frames, sample_rate, duration, sha256}`` or ``{"ok": False, "reason"}``."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return {"ok": False, "reason": "file is missing"}
    except OSError as exc:
        return {"ok": False, "reason": f"cannot stat file ({exc.strerror})"}
    try:
        frames, sr, channels, fmt = decode_frames(path)
    except AudioDecodeError as exc:
        return {"ok": False, "reason": _strip(path, exc.message)}
    except Exception as exc:  # noqa: BLE001 - a decoder crash must not end the run
        return {"ok": False, "reason": f"decoder error: {type(exc).__name__}: {exc}"}
    try:
        sha256 = file_digest(path, "sha256")
    except OSError as exc:
        return {"ok": False, "reason": f"cannot read file ({exc.strerror or exc})"}
    return {
        "sha256": sha256,
        "ok": True,
        "size": size,
        "frames": frames,
        "sample_rate": sr,
        "channels": channels,
        "duration": frames / sr,
    }


def check_clip(path: str, integrity: dict[str, Any], full: bool) -> dict[str, Any]:
    """``{"status": "ok" | "missing" | "corrupt", "reason"}`` for ``verify``."""
    if not os.path.exists(path):
        return {"status": "missing", "reason": "file is missing"}
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        return {"status": "corrupt", "reason": f"cannot stat file ({exc.strerror})"}
    want_size = integrity.get("size")
    if want_size is not None and size != want_size:
        kind = "truncated" if size < want_size else "changed"
        return {"status": "corrupt", "reason": f"{kind}: {size} bytes, the manifest records {want_size}"}
    try:
        if full:
            frames, *_ = decode_frames(path)
            want = integrity.get("frames")
            if want is not None and frames != want:
                return {"status": "corrupt", "reason": f"decodes to {frames} frames, the manifest records {want}"}
            want_digest = integrity.get("sha256")  # absent from manifests written before it was kept
            if want_digest is not None and file_digest(path, "sha256") != want_digest:
                return {"status": "corrupt", "reason": "changed: its sha256 differs from the manifest's"}
        else:
            audio_info(path)
    except AudioDecodeError as exc:
        return {"status": "corrupt", "reason": _strip(path, exc.message)}
    except Exception as exc:  # noqa: BLE001
        return {"status": "corrupt", "reason": f"decoder error: {type(exc).__name__}: {exc}"}
    return {"status": "ok", "reason": ""}


def check_clip_args(args: tuple[str, dict[str, Any], bool]) -> dict[str, Any]:
    return check_clip(*args)


def run_checks(
    check: Callable[[Any], dict[str, Any]], items: Sequence[Any], jobs: int, description: str, progress: bool
) -> list[dict[str, Any]]:
    """``check`` (a top-level function of this module) of every item, in order, in ``jobs``
    worker processes (here, for one job or a handful of items), with a progress bar."""
    if not items:
        return []
    results: list[dict[str, Any]] = []
    jobs = jobs if len(items) >= 4 else 1
    with progress_bar(description, len(items), enabled=progress) as advance:
        for _kind, _i, result in workers.run(check, items, jobs=jobs, start="fork", ordered=True):
            results.append(result)
            advance(1)
    return results
