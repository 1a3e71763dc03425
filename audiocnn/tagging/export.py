"""Export any audiocnn checkpoint or pretrained model to ONNX, and check the export.

``export_onnx`` writes ``MODEL.onnx``: the network, its input what the model's own
front-end produces (log-mel patches ``(batch, n_mels, frames)`` for mel models, waveform
windows ``(batch, samples)`` for waveform models), its output the per-tag probabilities
(sigmoid or softmax applied). The batch axis is dynamic, and so is the time axis of models
whose length policy is ``adaptive``. For mel models it also writes
``MODEL.frontend.onnx``: waveform ``(batch, samples)`` of any length to log-mel
``(batch, n_mels, frames)``, the front-end computed as a real DFT (frames times window
times a cos/sin basis, in float64 like the torch front-end on CPU), because the complex
STFT does not export. Tagging a song with ONNX Runtime alone is then: decode and resample
to the model's rate, the front-end over the whole song, cut patches of ``input_frames``
frames (the last ending at the end of the song), the network (see README, "Export to ONNX", and :func:`onnx_tag_song`).

The metadata (``metadata_props``) carries everything a user needs: labels, task,
activation, thresholds (when the checkpoint has them), sample rate, window (samples,
frames, seconds), the front-end config, the input kind and the architecture.

After writing, the export verifies itself: ONNX Runtime against the torch model on random
input and on real audio (the front-end too), printing the largest absolute difference;
above :data:`TOLERANCE` the export fails and the files are removed.

onnx and onnxruntime are an optional extra: ``pip install audiocnn[onnx]``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audiocnn import __version__
from audiocnn.audio import load_audio
from audiocnn.constants import SINGLE_LABEL
from audiocnn.errors import ModelError, NotAvailableError
from audiocnn.features.frontends import MelConfig, MelFrontend, MelStream, power_frames, real_dft_basis
from audiocnn.features.streaming import streamable
from audiocnn.fileio import atomic_write_bytes
from audiocnn.models.checkpoint import checkpoint_sha256, load_checkpoint
from audiocnn.pretrained import resolve_model
from audiocnn.tagging.ort_backend import OnnxFiles, OrtBackend, ort_session, sibling
from audiocnn.tagging.song import window_starts

TOLERANCE = 1e-4
OPSET = 17
INSTALL_HINT = "pip install audiocnn[onnx]"


class ExportError(ModelError):
    """An exported model does not reproduce the torch model."""


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or a one-line error saying how to install them."""
    try:
        import onnx  # deferred: optional dependency
        import onnxruntime  # deferred: optional dependency
    except ImportError as exc:
        raise NotAvailableError(
            f"ONNX export needs onnx and onnxruntime ({exc.name} is missing)", hint=INSTALL_HINT
        ) from None
    return onnx, onnxruntime


class _Network(nn.Module):
    """The model from its front-end's output to probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.predict_proba(m(x, from_features=True))


class RealDftLogMel(nn.Module):
    """:class:`MelFrontend` without complex numbers, for export: the same padding, frames,
    window, power, mel filterbank and compression, in float64; the DFT as a matrix."""

    def __init__(self, frontend: MelFrontend) -> None:
        super().__init__()
        self.frontend = frontend
        cos, sin = real_dft_basis(frontend.window)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.frontend.config
        x = x.to(torch.float64)
        if c.center:
            pad = c.n_fft // 2
            mode = "constant" if c.pad_mode == "constant" else c.pad_mode
            x = nn.functional.pad(x[:, None], (pad, pad), mode=mode)[:, 0]
        mag = torch.sqrt(power_frames(x, self.cos, self.sin, c.hop_length))
        if c.power != 1.0:
            mag = mag.pow(c.power)
        mel = torch.matmul(self.frontend.mel_fb.to(torch.float64), mag.transpose(1, 2))
        return self.frontend.compress(mel).float()


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how closely ONNX Runtime reproduces torch."""

    model: Path
    frontend: Path | None
    input_kind: str  # log-mel | waveform
    dynamic_time: bool
    checks: dict[str, float] = field(default_factory=dict)  # check name -> max abs difference
    metadata: dict[str, str] = field(default_factory=dict)
    frames: Path | None = None  # the streaming front-end (mel models whose padding a stream reproduces)

    @property
    def max_abs_diff(self) -> float:
        return max(self.checks.values()) if self.checks else 0.0


def onnx_metadata(model: nn.Module, meta: dict[str, Any], name: str, sha: str, dynamic_time: bool) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (every value a string; JSON where structured)."""
    c = model.frontend_config
    mel = isinstance(c, MelConfig)
    props: dict[str, Any] = {
        "audiocnn_version": __version__,
        "model": name,
        "model_sha256": sha,
        "architecture": str(meta.get("model", "")),
        "labels": json.dumps([str(x) for x in meta.get("labels") or []], ensure_ascii=False),
        "task": model.task,
        "activation": "softmax" if model.task == SINGLE_LABEL else "sigmoid",
        "sample_rate": str(model.sample_rate),
        "input": "log-mel" if mel else "waveform",
        "input_shape": json.dumps(["batch", c.n_mels, "frames"] if mel else ["batch", "samples"]),
        "window_samples": str(model.input_length),
        "window_frames": str(model.input_frames),
        "window_seconds": f"{model.input_seconds:.6f}",
        "min_frames": str(model.min_input_frames),
        "length_policy": str(model.length_policy),
        "dynamic_time": json.dumps(dynamic_time),
        "frontend": json.dumps(c.to_dict()),
    }
    if meta.get("thresholds") is not None:
        props["thresholds"] = json.dumps([float(t) for t in meta["thresholds"]])
    return {k: str(v) for k, v in props.items()}


def _to_onnx(module: nn.Module, example: torch.Tensor, axes: dict[int, str], in_name: str, out_name: str) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=[in_name],
            output_names=[out_name],
            dynamic_axes={in_name: axes, out_name: {0: "batch"}},
        )
    return buf.getvalue()


def _with_metadata(onnx: Any, data: bytes, props: dict[str, str]) -> bytes:
    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _max_diff(session: Any, module: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        want = module(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != want.shape:
        return math.inf
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())


def _real_audio(path: str | os.PathLike | None, sample_rate: int, seconds: float) -> np.ndarray:
    """Real music for the checks: ``path``, else the example song shipped with audiocnn,
    else a synthetic chord (when neither is at hand)."""
    shipped = Path(__file__).resolve().parents[2] / "examples" / "chorale.flac"
    src = Path(path) if path is not None else shipped if shipped.is_file() else None
    if src is not None:
        y = load_audio(src, sample_rate)
    else:
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        y = (sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 4).astype(np.float32)
    reps = int(np.ceil(seconds * sample_rate / len(y)))
    return np.tile(y, reps)[: int(seconds * sample_rate)].astype(np.float32)


def _song_patches(model: nn.Module, y: np.ndarray, frames: int) -> torch.Tensor:
    """Log-mel patches of a song as ``tag`` cuts them (whole-song mel, consecutive, the
    last ending at the end)."""
    stream = MelStream(model.frontend, "cpu")
    mel = np.concatenate([stream.push(y), stream.finish()], axis=-1)
    return torch.from_numpy(np.stack([mel[:, s : s + frames] for s in window_starts(mel.shape[-1], frames, frames)]))


def export_onnx(
    model: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    audio: str | os.PathLike | None = None,
    report: Callable[[str], None] = lambda line: None,
) -> ExportReport:
    """Write ``output`` (default: the checkpoint's name with ``.onnx``, in the current
    folder) and, for mel models, ``<output stem>.frontend.onnx`` and
    ``<output stem>.frames.onnx``; verify them (see the module docstring). ``audio``: the
    real song the checks use."""
    onnx, ort = require_onnx()
    path = resolve_model(model, cache_dir=cache_dir)
    net, meta = load_checkpoint(path, map_location="cpu")
    net = net.eval()
    out = Path(output) if output is not None else Path(f"{Path(str(model)).stem}.onnx")
    config = net.frontend_config
    mel = isinstance(config, MelConfig)
    written: list[Path] = []
    try:
        rep = _export_network(onnx, ort, net, meta, str(model), checkpoint_sha256(path), out, report)
        written.append(out)
        if mel:
            rep.frontend = sibling(out, "frontend")
            _export_frontend(onnx, ort, net, rep, audio, report)
            written.append(rep.frontend)
        if mel and streamable(config):
            rep.frames = sibling(out, "frames")
            _export_frames(onnx, net, rep)
            written.append(rep.frames)
        _check_real_song(ort, net, path, rep, audio, report)
    except BaseException:
        for p in written:
            with contextlib.suppress(OSError):
                p.unlink()
        raise
    return rep


def _write(onnx: Any, path: Path, data: bytes, props: dict[str, str]) -> bytes:
    data = _with_metadata(onnx, data, props)
    atomic_write_bytes(path, data)
    return data


def _export_network(
    onnx: Any,
    ort: Any,
    net: nn.Module,
    meta: dict[str, Any],
    name: str,
    sha: str,
    out: Path,
    report: Callable[[str], None],
) -> ExportReport:
    """The network; the time axis dynamic for adaptive models when the export keeps it so."""
    shape = net.feature_shape()
    wrapper = _Network(net).eval()
    torch.manual_seed(0)
    native = torch.randn(3, *shape)
    for dynamic in [True, False] if net.length_policy == "adaptive" else [False]:
        axes = {0: "batch", len(shape): "frames" if len(shape) == 2 else "samples"} if dynamic else {0: "batch"}
        data = _to_onnx(wrapper, torch.randn(2, *shape), axes, "input", "probabilities")
        props = onnx_metadata(net, meta, name, sha, dynamic)
        session = ort_session(ort, _with_metadata(onnx, data, props))
        checks = {"network, random input": _max_diff(session, wrapper, native)}
        if dynamic:
            longer = torch.randn(2, *shape[:-1], shape[-1] + 37)
            checks["network, random input, longer time axis"] = _max_diff(session, wrapper, longer)
            if max(checks.values()) > TOLERANCE:
                report("the time axis does not export dynamically for this model; exporting it fixed")
                continue
        rep = ExportReport(out, None, props["input"], dynamic, checks, props)
        _fail_above(rep, "network")
        _write(onnx, out, data, props)
        for k, v in checks.items():
            report(f"{k}: max abs difference {v:.2e} (onnxruntime vs torch)")
        return rep
    raise AssertionError("unreachable: the fixed export always returns or raises")


def _fail_above(rep: ExportReport, what: str) -> None:
    bad = {k: v for k, v in rep.checks.items() if not v <= TOLERANCE}
    if bad:
        k, v = next(iter(bad.items()))
        raise ExportError(
            f"{rep.model}: the ONNX {what} differs from the torch model by {v:.2e} on {k} (tolerance {TOLERANCE:g}); "
            "nothing was written",
            hint="report it with the model name and `audiocnn --version`",
        )


def _export_frontend(
    onnx: Any, ort: Any, net: nn.Module, rep: ExportReport, audio: str | os.PathLike | None, report: Callable
) -> None:
    fe = RealDftLogMel(net.frontend).eval()
    sr = net.sample_rate
    data = _to_onnx(fe, torch.randn(1, 3 * sr) * 0.1, {0: "batch", 1: "samples"}, "waveform", "log_mel")
    props = {**rep.metadata, "input": "waveform", "input_shape": json.dumps(["batch", "samples"]), "output": "log-mel"}
    session = ort_session(ort, _with_metadata(onnx, data, props))
    torch.manual_seed(1)
    real = torch.from_numpy(_real_audio(audio, sr, 30.0))[None]
    checks = {
        "front-end, random input": _max_diff(session, net.frontend, torch.randn(2, 5 * sr + 123) * 0.1),
        "front-end, real audio": _max_diff(session, net.frontend, real),
    }
    rep.checks.update(checks)
    _fail_above(rep, "front-end")
    _write(onnx, rep.frontend, data, props)
    for k, v in checks.items():
        report(f"{k}: max abs difference {v:.2e} (onnxruntime vs torch, log-mel)")


def _export_frames(onnx: Any, net: nn.Module, rep: ExportReport) -> None:
    """The front-end of whole frames without centring or ``top_db`` (what a song streamed
    block by block needs: :class:`audiocnn.features.streaming.FrameStream`); checked with
    the whole engine by :func:`_check_real_song`."""
    c = net.frontend.config
    inner = copy.copy(net.frontend)
    inner.config = dataclasses.replace(c, center=False, top_db=None)
    fe = RealDftLogMel(inner).eval()
    example = torch.randn(1, c.n_fft + 99 * c.hop_length) * 0.1
    data = _to_onnx(fe, example, {0: "batch", 1: "samples"}, "waveform", "log_mel")
    props = {**rep.metadata, "input": "waveform frames", "input_shape": json.dumps(["batch", "samples"])}
    _write(onnx, rep.frames, data, {**props, "output": "log-mel", "center": "false"})


def _check_real_song(
    ort: Any, net: nn.Module, path: Path, rep: ExportReport, audio: str | os.PathLike | None, report
) -> None:
    """Scores of 30 s of real music, the torch path ``tag`` takes (computed once) against
    ONNX Runtime twice: alone, as the recipe in the docs does it (the front-end over the
    whole song), and as ``tag``'s engine does it (:class:`OrtBackend`: the mel streamed in
    blocks of 7 s, one window at a time)."""
    y = _real_audio(audio, net.sample_rate, 30.0)
    wrapper = _Network(net).eval()
    size = net.input_frames if rep.frontend else net.input_length
    if rep.frontend is None:
        x = torch.from_numpy(np.stack([y[s : s + size] for s in window_starts(len(y), size, size)]))
    else:
        x = _song_patches(net, y, size)
    with torch.inference_mode():
        want = wrapper(x).numpy()
        # the engine runs a waveform model's own front-end (identity, or unit RMS) first
        want_engine = want if rep.frontend else wrapper(net.frontend(x)).numpy()
    key = "scores of a real song, onnxruntime only" + (" (front-end included)" if rep.frontend else "")
    _compare(rep, key, onnx_scores(ort, rep.model, rep.frontend, y, size), want, "model", report)
    key = "scores of a real song, the tagger's ONNX Runtime engine (streamed in blocks)"
    _compare(rep, key, _engine_scores(net, path, rep, y, size), want_engine, "engine", report)


def _engine_scores(net: nn.Module, path: Path, rep: ExportReport, y: np.ndarray, size: int) -> np.ndarray:
    """Per-window scores of ``y`` by ``tag``'s engine on the files just written."""
    engine = OrtBackend(path, OnnxFiles(rep.model, rep.frontend, rep.frames))
    if rep.frames is not None:
        stream, block = engine.mel_stream(), 7 * net.sample_rate
        parts = [stream.push(y[i : i + block]) for i in range(0, len(y), block)]
        x, from_features = np.concatenate([*parts, stream.finish()], axis=-1), True
    else:
        x, from_features = y, False
    windows = [x[..., s : s + size] for s in window_starts(x.shape[-1], size, size)]
    return np.concatenate([engine.run(w[None], from_features)[0] for w in windows])


def _compare(rep: ExportReport, key: str, got: np.ndarray, want: np.ndarray, what: str, report) -> None:
    rep.checks[key] = float(np.abs(got - want).max()) if got.shape == want.shape else math.inf
    report(f"{key}: max abs difference {rep.checks[key]:.2e} (vs torch)")
    _fail_above(rep, what)


def onnx_scores(
    ort: Any,
    network: str | os.PathLike,
    frontend: str | os.PathLike | None,
    y: np.ndarray,
    size: int,
    tail: str = "end",
) -> np.ndarray:
    """Per-window probabilities of a mono song ``y`` (at the model's rate, at least one
    window long) with ONNX Runtime only: the front-end over the whole song, consecutive
    windows of ``size`` frames (mel models) or samples (waveform models), the last ending
    at the end of the song (``tail="drop"``: no window for a shorter tail), the network."""
    if frontend is not None:
        fe = ort_session(ort, frontend)
        feats = fe.run(None, {"waveform": y[None].astype(np.float32)})[0][0]
        x = np.stack([feats[:, s : s + size] for s in window_starts(feats.shape[-1], size, size, tail)])
    else:
        x = np.stack([y[s : s + size] for s in window_starts(len(y), size, size, tail)])
    session = ort_session(ort, network)
    return session.run(None, {"input": x.astype(np.float32)})[0]
