"""A mel front-end over one long signal, block by block, without torch.

:class:`FrameStream` keeps the bookkeeping of a centred STFT over a signal that arrives in
blocks: the signal's two ends get the centre padding here, once, and a function computing
the compressed frames of whole ``center=False`` frames runs over the frames each block
completes. Memory stays bounded by one block, whatever the song's length. Who computes the
frames is given: torch (:class:`audiocnn.features.frontends.MelStream`) or ONNX Runtime
(the tagger's fast path, :mod:`audiocnn.tagging.ort_backend`); both are frame for frame
equal to the front-end over the whole signal.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from audiocnn.errors import ConfigError
from audiocnn.features.configs import MelConfig

# numpy names of the torch.stft padding modes a stream can reproduce at the signal's ends
# ("circular" needs the end of the signal before its start).
NP_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}

#: ``(samples of whole frames, float32) -> (n_mels, frames)`` compressed frames, no centring
FramesFn = Callable[[np.ndarray], np.ndarray]


def streamable(config: MelConfig) -> bool:
    """Whether a stream can reproduce ``config``'s centre padding at the signal's ends."""
    return not config.center or config.pad_mode in NP_PAD_MODES


class FrameStream:
    """A mel front-end applied to one long signal block by block, frame for frame equal
    to applying it to the whole signal.

    ``frames`` computes the compressed frames of whole ``center=False`` frames (what the
    front-end gives with ``center=False, top_db=None``). ``push`` returns the frames a
    block completes, ``(n_mels, frames)``; ``finish`` those left at the end. Per-example
    ``top_db`` clipping needs the whole signal's peak: it is left out of ``push`` and
    applied by :meth:`clip_top_db`.
    """

    def __init__(self, config: MelConfig, frames: FramesFn) -> None:
        if not streamable(config):
            raise ConfigError(f"mel pad_mode {config.pad_mode!r} cannot be streamed")
        self.config, self._compute = config, frames
        self.pad = config.n_fft // 2 if config.center else 0
        self._np_mode = NP_PAD_MODES.get(config.pad_mode, "constant")
        self._started = self.pad == 0
        self._head = np.zeros(0, np.float32)  # raw samples waiting for the left pad
        self._tail = np.zeros(0, np.float32)  # last pad+1 raw samples, for the right pad
        self._buf = np.zeros(0, np.float32)  # padded-domain samples not yet framed
        self.samples = 0  # input samples pushed so far
        self.peak = 0  # largest buffer held, in samples

    def push(self, y: np.ndarray) -> np.ndarray:
        """The next block of the signal; returns the frames it completes."""
        pad = self.pad
        self.samples += y.shape[0]
        if pad:
            self._tail = np.concatenate([self._tail, y])[-(pad + 1) :]
        if not self._started:
            self._head = np.concatenate([self._head, y])
            if self._head.shape[0] <= pad:  # the left pad reflects pad+1 samples
                return np.zeros((self.config.n_mels, 0), np.float32)
            y = self._left_padded()
        return self._frames(y)

    def finish(self) -> np.ndarray:
        """The end of the signal: pads it and returns the remaining frames."""
        y = self._left_padded() if not self._started else np.zeros(0, np.float32)
        if self.pad and self.samples:
            right = np.pad(self._tail, (0, self.pad), mode=self._np_mode)[-self.pad :]
            y = np.concatenate([y, right.astype(np.float32)])
        return self._frames(y)

    def _left_padded(self) -> np.ndarray:
        pad = self.pad
        left = (
            np.pad(self._head[: pad + 1], (pad, 0), mode=self._np_mode)[:pad]
            if self._head.size
            else np.zeros(0, np.float32)
        )
        y = np.concatenate([left.astype(np.float32), self._head])
        self._head = np.zeros(0, np.float32)
        self._started = True
        return y

    def _frames(self, y: np.ndarray) -> np.ndarray:
        c = self.config
        buf = np.concatenate([self._buf, y]) if self._buf.shape[0] else y
        self.peak = max(self.peak, buf.shape[0])
        n = 0 if buf.shape[0] < c.n_fft else (buf.shape[0] - c.n_fft) // c.hop_length + 1
        if n == 0:
            self._buf = buf
            return np.zeros((c.n_mels, 0), np.float32)
        seg = np.ascontiguousarray(buf[: (n - 1) * c.hop_length + c.n_fft], dtype=np.float32)
        self._buf = buf[n * c.hop_length :]
        return self._compute(seg)

    def clip_top_db(self, mel: np.ndarray) -> np.ndarray:
        """The config's ``top_db`` clipping over the whole signal's frames (no-op without)."""
        c = self.config
        if c.compression != "db" or c.top_db is None or mel.size == 0:
            return mel
        return np.maximum(mel, mel.max() - np.float32(c.top_db))
