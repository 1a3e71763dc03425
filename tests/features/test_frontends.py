"""Front-ends agree with librosa; configs round-trip and hash stably."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import torch
import yaml

from audiocnn.errors import ConfigError
from audiocnn.features import MelConfig, WaveformConfig, config_from_dict
from audiocnn.features.frontends import build_frontend
from audiocnn.testing.audio import synth_tone


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    rng = np.random.default_rng(3)
    tone = synth_tone(2.0, 16000, freqs=(110.0, 440.0, 1760.0, 5000.0))
    return (tone + 0.05 * rng.standard_normal(tone.shape)).astype(np.float32)


MEL_CASES = [
    {},
    {"n_fft": 1024, "hop_length": 160, "n_mels": 128, "power": 1.0},
    {"htk": True, "norm": None, "f_min": 50.0, "f_max": 7000.0},
    {"win_length": 400, "n_mels": 64},
    {"center": False},
    {"sample_rate": 22050, "n_fft": 2048, "hop_length": 512, "n_mels": 128},
]


def _librosa_mel(y: np.ndarray, c: MelConfig) -> np.ndarray:
    return librosa.feature.melspectrogram(
        y=y,
        sr=c.sample_rate,
        n_fft=c.n_fft,
        hop_length=c.hop_length,
        win_length=c.win_length,
        center=c.center,
        pad_mode=c.pad_mode,
        power=c.power,
        n_mels=c.n_mels,
        fmin=c.f_min,
        fmax=c.f_max,
        htk=c.htk,
        norm=c.norm,
    )


@pytest.mark.parametrize("kw", MEL_CASES)
def test_mel_matches_librosa(signal: np.ndarray, kw: dict) -> None:
    c = MelConfig(compression="none", **kw)
    ref = _librosa_mel(signal, c)
    out = build_frontend(c)(torch.from_numpy(signal)[None])[0].numpy()
    assert out.shape == ref.shape == (c.n_mels, c.num_frames(len(signal)))
    # relative error, with a floor far below any bin that carries signal
    rel = np.abs(out - ref) / np.maximum(np.abs(ref), 1e-6 * ref.max())
    assert rel.max() < 1e-5


def test_batch_first_and_batch_independent(signal: np.ndarray) -> None:
    fe = build_frontend(MelConfig())
    x = torch.from_numpy(np.stack([signal, signal[::-1].copy(), signal * 0.5]))
    out = fe(x)
    assert out.shape == (3, 96, MelConfig().num_frames(len(signal)))
    torch.testing.assert_close(out[1:2], fe(x[1:2]))
    assert fe(x[:, None, :]).shape == out.shape  # (B, 1, T) accepted too


def test_compressions(signal: np.ndarray) -> None:
    base = MelConfig(compression="none")
    power = build_frontend(base)(torch.from_numpy(signal)[None])[0].double().numpy()
    db = build_frontend(MelConfig(compression="db"))(torch.from_numpy(signal)[None])[0].numpy()
    np.testing.assert_allclose(db, librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None), atol=1e-3)
    top = build_frontend(MelConfig(compression="db", top_db=60.0))(torch.from_numpy(signal)[None])[0].numpy()
    np.testing.assert_allclose(top, librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=60.0), atol=1e-3)
    l1p = build_frontend(MelConfig(compression="log1p"))(torch.from_numpy(signal)[None])[0].numpy()
    np.testing.assert_allclose(l1p, np.log1p(power), rtol=1e-5, atol=1e-6)
    mus = build_frontend(MelConfig(compression="log10_10000", fp16_before_log=True))(torch.from_numpy(signal)[None])[
        0
    ].numpy()
    np.testing.assert_allclose(
        mus, np.log10(10000 * power.astype(np.float16).astype(np.float64) + 1), rtol=1e-5, atol=1e-5
    )


def test_waveform_frontend() -> None:
    x = torch.randn(2, 1000) * 3
    assert torch.equal(build_frontend(WaveformConfig())(x), x)
    y = build_frontend(WaveformConfig(normalize=True))(x)
    torch.testing.assert_close(y.pow(2).mean(dim=1), torch.ones(2), rtol=1e-4, atol=1e-4)


def test_frontend_under_bf16_autocast(signal: np.ndarray) -> None:
    fe = build_frontend(MelConfig())
    x = torch.from_numpy(signal)[None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fe(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fe(x))


@pytest.mark.parametrize(
    "config",
    [WaveformConfig(), WaveformConfig(22050, True), MelConfig(), MelConfig(n_mels=128, f_max=8000.0, top_db=80.0)],
)
def test_config_round_trip(config) -> None:
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config
    assert config_from_dict(config.to_dict()).hash == config.hash


def test_hash_is_stable_and_discriminating() -> None:
    # Pinned: the feature store and checkpoints key on these; a change orphans stores.
    assert MelConfig().hash == MelConfig().hash
    assert MelConfig(f_max=8000).hash == MelConfig(f_max=8000.0).hash
    assert MelConfig().hash != MelConfig(n_mels=128).hash
    assert MelConfig().hash != WaveformConfig().hash
    assert len(MelConfig().hash) == 10
    assert WaveformConfig().hash == PINNED_WAVEFORM_HASH
    assert MelConfig().hash == PINNED_MEL_HASH


PINNED_WAVEFORM_HASH = "552347531e"
PINNED_MEL_HASH = "ffa3ae0a0c"


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="compression"):
        MelConfig(compression="sqrt")
    with pytest.raises(ConfigError, match="f_max"):
        MelConfig(f_max=9000.0)
    with pytest.raises(ConfigError, match="unknown mel front-end option"):
        config_from_dict({"kind": "mel", "nmels": 96})
    with pytest.raises(ConfigError, match="kind"):
        config_from_dict({"kind": "cqt"})


@pytest.mark.parametrize(
    "options, expect",
    [
        ({"n_mels": 100000}, "n_mels must be a whole number in [1, 257] (n_fft=512 gives 257 frequency bins)"),
        ({"n_mels": 1e9, "n_fft": 16384}, "n_mels must be a whole number in [1, 1024], got 1000000000.0"),
        ({"n_fft": 1 << 20}, "n_fft must be a whole number in [2, 16384]"),
        ({"hop_length": 0}, "hop_length must be a whole number in [1, 16384]"),
        ({"win_length": 1024}, "win_length must be a whole number in [1, 512] (at most n_fft)"),
        ({"sample_rate": 10_000_000}, "sample_rate must be a whole number in [1000, 384000]"),
        ({"n_mels": True}, "n_mels must be a whole number in [1, 257]"),
        ({"kind": "waveform", "sample_rate": 1}, "sample_rate must be a whole number in [1000, 384000], got 1"),
    ],
)
def test_sizes_are_bounded(options, expect) -> None:
    """Sizes a feature cannot mean (1 Hz) or a machine cannot hold (10 MHz, 100,000 bands)."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({"kind": "mel", **options})
    assert str(info.value).startswith(expect)
    assert MelConfig(n_fft=16384, n_mels=1024, sample_rate=384000).n_mels == 1024  # the bounds themselves


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--set", "n_mels=100000"], "n_mels must be a whole number in [1, 257] (n_fft=512 gives 257 frequency bins)"),
        (["--sample-rate", "10000000"], "sample_rate must be a whole number in [1000, 384000]"),
        (["--kind", "waveform", "--sample-rate", "1"], "sample_rate must be a whole number in [1000, 384000]"),
    ],
)
def test_features_refuses_sizes_before_any_work(tmp_path, capsys, args, expect) -> None:
    from audiocnn.cli.main import run

    assert run(["--data-dir", str(tmp_path), "features", "not-prepared", *args]) == 1
    assert capsys.readouterr().err.startswith(f"error: {expect}, got ")


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin,fmax,htk,norm",
    [
        (16000, 512, 96, 0.0, None, False, "slaney"),
        (16000, 512, 128, 0.0, 8000.0, False, "slaney"),
        (22050, 2048, 128, 20.0, 11025.0, True, None),
        (12000, 512, 96, 50.0, 6000.0, True, "slaney"),
        (44100, 1024, 40, 0.0, 16000.0, False, None),
    ],
)
def test_filterbank_equals_librosa(sr, n_fft, n_mels, fmin, fmax, htk, norm) -> None:
    from audiocnn.features.frontends import mel_filterbank

    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk, norm)
    ref = librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm, dtype=np.float64
    )
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= 1e-6 * np.max(np.abs(ref))


def test_building_a_mel_frontend_does_not_import_librosa() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from audiocnn.features.frontends import MelConfig, build_frontend; "
        "build_frontend(MelConfig()); print('librosa' in sys.modules, 'scipy.signal' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"pad_mode": "reflect", "top_db": 60.0},
        {"center": False, "compression": "log10_10000"},
        {"pad_mode": "replicate", "compression": "log1p", "n_fft": 1024, "hop_length": 160},
    ],
)
def test_mel_stream_equals_whole_signal(signal: np.ndarray, kw: dict) -> None:
    from audiocnn.features.frontends import MelStream

    fe = build_frontend(MelConfig(**kw))
    whole = fe(torch.from_numpy(signal)[None])[0].numpy()
    stream = MelStream(fe)
    cuts = [0, 100, 257, 5000, 5001, 17000, len(signal)]  # blocks shorter than the padding too
    parts = [stream.push(signal[a:b]) for a, b in zip(cuts, cuts[1:])] + [stream.finish()]
    streamed = stream.clip_top_db(np.concatenate(parts, axis=1))
    assert stream.samples == len(signal)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-4)
    assert stream.peak < len(signal)  # never held the whole signal
