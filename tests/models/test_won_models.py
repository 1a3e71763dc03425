"""The last three models of Won et al. 2020's benchmark: ``crnn``, ``harmonic-cnn``, ``cnnsa``.

Their reference geometry and front-end; the guarantees the registry-wide tests do not
give every model by themselves (ONNX export within 1e-4, transfer on cached embeddings of
a frozen backbone, ``evaluate`` and ``tag`` of the result, DDP gradients); and what each
model explains: the Harmonic CNN's learned filters in the run folder, the self-attention
model's attention over time from ``tag --attention``. Models at the learning checks'
reduced widths (``audiocnn/testing/learning_checks.py``), 8 kHz.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import audiocnn.testing.learning_checks as L
from audiocnn.audio import load_audio
from audiocnn.cli.main import run
from audiocnn.models import create_model
from audiocnn.models.attention import attention_rollout
from audiocnn.models.checkpoint import load_checkpoint, model_metadata, save_checkpoint
from audiocnn.models.harmonic import harmonic_centres
from audiocnn.tagging.song import window_starts
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.testing.models import SR
from audiocnn.testing.training import make_dataset, write_config

NEW = ("crnn", "harmonic-cnn", "cnnsa")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small(name: str, num_classes: int = 3, task: str = "single-label", **kw):
    torch.manual_seed(0)
    return create_model(name, num_classes, task, **{**L.MODEL_KWARGS[name], **kw})


# ------------------------------------------------------------------ reference geometry
def test_paper_geometry_and_front_ends():
    """Sequence lengths of minzwon's models at their native inputs (widths do not matter)."""
    crnn = create_model("crnn", 50, channels=[4, 4, 4, 4]).eval()
    seen = {}
    crnn.rnn.register_forward_hook(lambda m, args, out: seen.update(steps=args[0].shape[1]))
    with torch.no_grad():
        crnn(torch.zeros(1, 464000))
    assert (crnn.sample_rate, crnn.frontend_config.n_mels, crnn.input_frames, seen["steps"]) == (16000, 96, 1813, 18)

    sa = create_model("cnnsa", 50, channels=[8] * 7, ffn_dim=16).eval()
    with torch.no_grad():
        att = sa.time_attention(torch.randn(1, 240000) * 0.1)
    assert (sa.frontend_config.n_mels, sa.input_frames, att.shape) == (128, 938, (1, 118))
    assert torch.allclose(att.sum(-1), torch.ones(1))

    hcnn = create_model("harmonic-cnn", 50, channels=[4, 4, 4, 4, 8, 8, 8]).eval()
    assert hcnn.spec.input_kind == "waveform" and hcnn.input_length == 80000
    with torch.no_grad():
        assert hcnn.harmonic(torch.randn(1, 80000)).shape == (1, 6, 128, 313)


def test_harmonic_filters_follow_the_reference():
    """Centres from C1 up, 2 per semitone, 6 harmonics (librosa's note rounding, as the
    reference's ``initialize_filterbank``); |STFT|^2 as torch.stft gives it; triangles of
    height 1 whose base is the ERB bandwidth over Q."""
    librosa = pytest.importorskip("librosa")
    low, high = librosa.note_to_midi("C1"), librosa.note_to_midi(librosa.hz_to_note(16000 / 12))
    base = librosa.midi_to_hz(np.linspace(low, high, (high - low) * 2 + 1)[:-1])
    centres, bands = harmonic_centres(16000, 6, 2)
    assert bands == 128 and np.allclose(centres, np.concatenate([base * h for h in range(1, 7)]))
    fb = create_model("harmonic-cnn", 5).harmonic
    x = torch.randn(2, 16000)
    ref = torch.stft(x, 512, 256, window=torch.hann_window(512), pad_mode="reflect", return_complex=True).abs() ** 2
    got = fb.power_spectrogram(x).transpose(1, 2)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5
    tri = fb.filters().detach()
    k = int(torch.argmax(tri[:, 200]))  # filter 200 peaks at the bin nearest its centre
    assert abs(float(fb.fft_hz[k]) - float(fb.f0[200])) <= 16000 / 512
    width = float((tri[:, 300] > 0).sum()) * 16000 / 512
    assert width == pytest.approx(float(fb.bandwidths().detach()[300]), abs=2 * 16000 / 512)


def test_attention_rollout_points_at_the_attended_step():
    """Every layer's [CLS] attends to step 3: the rollout puts most weight there, rows sum to 1."""
    n = 6
    probs = torch.full((1, 2, n, n), 1.0 / n)
    probs[:, :, 0] = 0.0
    probs[:, :, 0, 4] = 1.0  # position 4 = time step 3
    out = attention_rollout([probs, probs])
    assert out.shape == (1, n - 1) and torch.allclose(out.sum(-1), torch.ones(1))
    assert int(out.argmax()) == 3 and float(out[0, 3]) > 0.5


# ------------------------------------------------------- train, transfer, tag, export
@pytest.fixture(scope="module")
def transferred(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Per model: an untrained checkpoint for `tones` (3 labels), then a run on `tags` (4
    labels) from it with a frozen backbone and cached embeddings."""
    root = tmp_path_factory.mktemp("won")
    data = root / "data"
    data.mkdir()
    make_dataset(data, "tones", "single-label")
    make_dataset(data, "tags", "multi-label")
    runs = {}
    for name in NEW:
        model = _small(name)
        base = save_checkpoint(root / f"{name}.safetensors", model, model_metadata(model, ["a", "b", "c"]))
        cfg = write_config(root / f"{name}.yaml", dataset="tags", model=name, epochs=1, eval_chunks=2)
        argv = ["--data-dir", str(data), "train", str(cfg), "--run-dir", str(root / name), "--device", "cpu"]
        sets = [f"init={base}", "freeze_backbone=true", "embedding_chunks=2"]
        assert run([*argv, *(a for s in sets for a in ("--set", s))]) == 0
        runs[name] = root / name
        before, after = load_file(base), load_file(root / name / "best.safetensors")
        frozen = [k for k in before if not k.startswith("head.")]
        assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), name
        assert len(list((data / "tags" / "embeddings").glob("*/train.npy"))) == NEW.index(name) + 1
    return data, runs


@pytest.mark.parametrize("name", NEW)
def test_frozen_transfer_then_evaluate_tag_and_export(transferred, name, tmp_path, capsys):
    data, runs = transferred
    ckpt = runs[name] / "best.safetensors"
    code = run(["--data-dir", str(data), "evaluate", str(runs[name]), "--split", "test", "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["n_clips"] == 4
    song = write_audio(tmp_path / "song.wav", synth_tone(4.0, SR), SR)
    assert run(["tag", str(song), "-m", str(ckpt), "--format", "json"]) == 0
    tagged = json.loads(capsys.readouterr().out)
    # 4 s: two windows, and one ending at the end of the audio
    assert tagged["architecture"] == name and len(tagged["tags"]) == 4 and tagged["windows"] == 3
    # ONNX: the export verifies itself (network, front-end, a real song) and fails above 1e-4
    onnx_path = tmp_path / f"{name}.onnx"
    code = run(["export", str(ckpt), "-o", str(onnx_path), "--audio", str(song)])
    err = capsys.readouterr().err
    if code == 2 and "pip install audiocnn[onnx]" in err:
        pytest.skip("onnxruntime is not installed")
    assert code == 0, err
    diffs = [float(line.split("max abs difference ")[1].split()[0]) for line in err.splitlines() if "max abs" in line]
    assert diffs and max(diffs) <= 1e-4
    import onnx  # deferred: the optional extra, present when the export ran

    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(meta["dynamic_time"]) is True  # GRU, attention and harmonic filters: any length


def _attention_of(model, song: Path) -> np.ndarray:
    """``CNNSA.time_attention`` on the tagger's windows of ``song`` (song framing: the whole
    song's log-mel cut into patches of the model's input, the last ending at its end)."""
    frames = model.input_frames
    with torch.no_grad():
        mel = model.frontend(torch.from_numpy(load_audio(song, SR))[None])[0]
        starts = window_starts(mel.shape[-1], frames, frames)
        patches = torch.stack([mel[:, s : s + frames] for s in starts])
        return model.time_attention(patches, from_features=True).numpy()


def test_tag_attention_writes_the_rollout_of_every_window(transferred, tmp_path, capsys):
    data, runs = transferred
    ckpt = runs["cnnsa"] / "best.safetensors"
    song = write_audio(tmp_path / "my song.wav", synth_tone(4.0, SR, seed=3), SR)
    out = tmp_path / "att"
    assert run(["tag", str(song), "-m", str(ckpt), "--attention", str(out), "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    weights = np.load(out / "my song.attention.npy")
    assert res["attention"] == str(out / "my song.attention.npy")
    assert (out / "my song.attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, _ = load_checkpoint(ckpt)
    model.eval()
    want = _attention_of(model, song)
    assert res["windows"] == 3 and weights.shape == (3, 12) and np.allclose(weights.sum(1), 1.0, atol=1e-5)
    assert np.abs(weights - want).max() < 1e-5
    # a library run: two decoding workers, songs sharing batches of 3; each keeps its own rows
    other = write_audio(tmp_path / "other.wav", synth_tone(3.0, SR, seed=4), SR)
    lib = tmp_path / "lib"
    argv = ["tag", str(song), str(other), "-m", str(ckpt), "--attention", str(lib), "-j", "2", "--batch-size", "3"]
    assert run([*argv, "--output", str(tmp_path / "r.jsonl")]) == 0
    assert np.abs(np.load(lib / "my song.attention.npy") - want).max() < 1e-5
    rows = np.load(lib / "other.attention.npy")
    assert rows.shape == (2, 12) and np.abs(rows - _attention_of(model, other)).max() < 1e-5


def test_tag_attention_refuses_what_it_cannot_do(transferred, tmp_path, capsys):
    data, runs = transferred
    song = write_audio(tmp_path / "s.wav", synth_tone(2.0, SR), SR)
    out = tmp_path / "att"
    for args, says in (
        (["-m", str(runs["crnn"] / "best.safetensors")], "--attention needs a model with self-attention"),
        (["-m", str(runs["cnnsa"] / "best.safetensors"), "--backend", "onnxruntime"], "--attention needs the torch"),
    ):
        assert run(["tag", str(song), "--attention", str(out), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert says in err[-1] and "Traceback" not in "".join(err), err  # one line says why, last
    assert not list(out.glob("*"))


def test_harmonic_filters_written_after_training(transferred, tmp_path):
    """Learned centres (learn_f0) and bandwidth move, and the run folder shows both."""
    data, _ = transferred
    kw = {**L.MODEL_KWARGS["harmonic-cnn"], "learn_f0": True}
    cfg = write_config(tmp_path / "h.yaml", dataset="tones", model="harmonic-cnn", epochs=1, lr=0.05, model_kwargs=kw)
    argv = ["--data-dir", str(data), "train", str(cfg), "--run-dir", str(tmp_path / "h"), "--device", "cpu"]
    assert run(argv) == 0
    png, csv = tmp_path / "h" / "harmonic_filters.png", tmp_path / "h" / "harmonic_filters.csv"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = np.loadtxt(csv, delimiter=",", skiprows=1)
    model, _ = load_checkpoint(tmp_path / "h" / "best.safetensors")
    assert rows.shape == (6 * 52, 6) and np.allclose(rows[:, 3], model.harmonic.f0.detach().numpy(), atol=1e-3)
    assert np.abs(rows[:, 3] - rows[:, 2]).max() > 1e-3  # centres moved
    assert np.abs(rows[:, 5] / rows[:, 4] - 1).max() > 1e-3  # bandwidths moved


# -------------------------------------------------------------------------------- DDP
def test_ddp_reduces_every_gradient(tmp_path):
    """Two gloo processes, different data: DDP without find_unused_parameters averages every
    parameter's gradient (equal on both ranks, the GRU's and the attention's included)."""
    import torch.multiprocessing as mp  # deferred: this test only

    from tests.models.ddp_grad_worker import reduce_gradients  # deferred: as above

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        models = {name: L.MODEL_KWARGS[name] for name in NEW}
        mp.spawn(reduce_gradients, args=(port, str(tmp_path), models), nprocs=2, join=True)
    finally:
        if env is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = env
    a, b = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    for name in NEW:
        assert np.abs(a[name]).sum() > 0
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-7, err_msg=name)
