"""Shared fixtures: synthetic audio written in several formats. No test touches the network."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def synth_tone(
    seconds: float = 2.0,
    sample_rate: int = 22050,
    freqs: tuple[float, ...] = (220.0, 330.0, 440.0),
    channels: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """A deterministic chord plus a little noise, shape (frames,) or (frames, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    y = sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) / (len(freqs) * 2)
    y = y + 0.01 * rng.standard_normal(t.shape)
    if channels == 1:
        return y.astype(np.float32)
    return np.stack([y * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1).astype(np.float32)


def write_audio(path: Path, y: np.ndarray, sample_rate: int, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, sample_rate, **kw)
    return path


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """Files of every format load_audio supports, made once per session."""
    d = tmp_path_factory.mktemp("audio")
    mono = synth_tone(3.0, 22050)
    stereo = synth_tone(3.0, 44100, channels=2, seed=1)
    write_audio(d / "mono22k.wav", mono, 22050)
    write_audio(d / "stereo44k.wav", stereo, 44100)
    write_audio(d / "mono22k.au", mono, 22050, format="AU", subtype="PCM_16")
    write_audio(d / "stereo44k.flac", stereo, 44100)
    write_audio(d / "mono22k.ogg", mono, 22050, format="OGG", subtype="VORBIS")
    write_audio(d / "stereo48k.opus", synth_tone(3.0, 48000, channels=2), 48000, format="OGG", subtype="OPUS")
    write_audio(d / "stereo44k.mp3", stereo, 44100, format="MP3")
    write_audio(d / "mono16k.mp3", synth_tone(3.0, 16000), 16000, format="MP3")
    return d


@pytest.fixture()
def data_dir(tmp_path, monkeypatch) -> Path:
    """An empty audiocnn data root, also set as AUDIOCNN_DATA_DIR."""
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("AUDIOCNN_DATA_DIR", str(d))
    return d


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory) -> Iterator[Path]:
    """The model cache (pretrained imports, ONNX exports) of the whole test session: a
    temporary folder, never the user's ~/.cache; musicnn's models import once per session."""
    d = tmp_path_factory.mktemp("audiocnn-cache")
    before = os.environ.get("AUDIOCNN_CACHE_DIR")
    os.environ["AUDIOCNN_CACHE_DIR"] = str(d)
    yield d
    if before is None:
        os.environ.pop("AUDIOCNN_CACHE_DIR", None)
    else:
        os.environ["AUDIOCNN_CACHE_DIR"] = before


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    """An empty model cache of this test only, set as AUDIOCNN_CACHE_DIR."""
    d = tmp_path / "cache"
    monkeypatch.setenv("AUDIOCNN_CACHE_DIR", str(d))
    return d


_LOOPBACK = ("127.", "::1", "localhost")


@pytest.fixture(autouse=True)
def _only_loopback_network(monkeypatch):
    """No test may reach any address but this machine's loopback: fail loudly if one tries."""
    import socket

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(address) -> None:
        if isinstance(address, tuple) and address:
            host = str(address[0])
            if not host.startswith(_LOOPBACK):
                raise ConnectionRefusedError(f"tests may only connect to 127.0.0.1, not {host!r}")

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not str(host).startswith(_LOOPBACK):
            raise socket.gaierror(f"tests may only resolve loopback names, not {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's training runs (steadier on a shared 2-core machine);
    use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
