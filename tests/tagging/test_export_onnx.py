"""`audiocnn export MODEL --format onnx`: the files, their metadata, and that ONNX Runtime
alone reproduces `audiocnn tag` (skipped only where onnxruntime is not installed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audiocnn.audio import load_audio
from audiocnn.cli.main import run
from audiocnn.models.checkpoint import model_metadata, save_checkpoint
from audiocnn.models.registry import create_model
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.testing.models import SR, make_checkpoint

torch.set_num_threads(1)

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install audiocnn[onnx])")
onnx = pytest.importorskip("onnx")

from audiocnn.tagging import Tagger  # noqa: E402
from audiocnn.tagging import export as export_mod  # noqa: E402
from audiocnn.tagging.stream import tag_stream  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chorale.flac"


def _export(capsys, *args: str) -> tuple[int, str, str]:
    code = run(["export", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("musicnn") is None, reason="musicnn is not installed")
def test_musicnn_mtt_in_onnxruntime_matches_tag(capsys, tmp_path):
    data = tmp_path / "data"
    out = tmp_path / "mtt.onnx"
    code = run(["--data-dir", str(data), "export", "musicnn-mtt", "--format", "onnx", "-o", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert stdout.split() == [str(out), str(tmp_path / "mtt.frontend.onnx"), str(tmp_path / "mtt.frames.onnx")]
    assert "max abs difference" in err and "largest difference" in err
    meta = _meta(out)
    labels = json.loads(meta["labels"])
    assert len(labels) == 50 and meta["task"] == "multi-label" and meta["activation"] == "sigmoid"
    assert meta["sample_rate"] == "16000" and meta["window_frames"] == "187" and meta["input"] == "log-mel"
    assert json.loads(meta["frontend"])["n_mels"] == 96 and "thresholds" not in meta
    assert json.loads(meta["dynamic_time"]) is True

    y = load_audio(EXAMPLE, 16000)
    taggram = export_mod.onnx_scores(ort, out, tmp_path / "mtt.frontend.onnx", y, 187)
    code = run(["--data-dir", str(data), "tag", str(EXAMPLE), "--format", "json"])
    tagged = json.loads(capsys.readouterr().out)
    assert code == 0 and tagged["windows"] == taggram.shape[0]
    want = {t["tag"]: t["score"] for t in tagged["tags"]}
    got = dict(zip(labels, taggram.mean(axis=0)))
    assert max(abs(got[k] - want[k]) for k in want) < 1e-4

    # dynamic batch and time axes
    session = export_mod.ort_session(ort, out)
    for shape in [(1, 96, 187), (4, 96, 187), (2, 96, 250)]:
        assert session.run(None, {"input": np.zeros(shape, np.float32)})[0].shape == (shape[0], 50)


def test_waveform_model_exports_whole_with_thresholds_in_the_metadata(capsys, tmp_path):
    model = create_model("test-probe-wave", num_classes=2, task="multi-label")
    ckpt = save_checkpoint(
        tmp_path / "wave.safetensors", model, model_metadata(model, ["a", "b"], thresholds=[0.25, 0.75])
    )
    song = write_audio(tmp_path / "song.wav", synth_tone(4.0, SR), SR)
    code, stdout, err = _export(capsys, str(ckpt), "-o", str(tmp_path / "w.onnx"), "--audio", str(song))
    assert code == 0, err
    assert stdout.split() == [str(tmp_path / "w.onnx")]  # no separate front-end
    meta = _meta(tmp_path / "w.onnx")
    assert json.loads(meta["thresholds"]) == [0.25, 0.75] and meta["input"] == "waveform"
    assert json.loads(meta["labels"]) == ["a", "b"] and meta["window_samples"] == str(SR)


def test_fixed_length_model_keeps_a_fixed_time_axis(capsys, tmp_path):
    ckpt = make_checkpoint(tmp_path / "fixed.safetensors", "test-fixed-mel")
    code, _, err = _export(capsys, str(ckpt), "-o", str(tmp_path / "f.onnx"))
    assert code == 0, err
    assert json.loads(_meta(tmp_path / "f.onnx")["dynamic_time"]) is False
    session = export_mod.ort_session(ort, tmp_path / "f.onnx")
    frames = int(_meta(tmp_path / "f.onnx")["window_frames"])
    assert session.run(None, {"input": np.zeros((3, 8, frames), np.float32)})[0].shape == (3, 4)


def test_an_export_that_does_not_reproduce_torch_fails_and_writes_nothing(capsys, tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel")
    monkeypatch.setattr(export_mod, "TOLERANCE", 0.0)
    monkeypatch.setattr(export_mod, "_max_diff", lambda *a: 1e-3)
    code, _, err = _export(capsys, str(ckpt), "-o", str(tmp_path / "m.onnx"))
    assert code == 1 and "differs from the torch model by 1.00e-03" in err
    assert not list(tmp_path.glob("*.onnx"))


def test_missing_onnxruntime_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, _, err = _export(capsys, str(ckpt))
    assert code == 2 and "pip install audiocnn[onnx]" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["test-probe-mel", "test-probe-wave"])
def test_backend_onnxruntime_gives_torch_scores(capsys, tmp_path, cache_dir, name):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", name)
    songs = [write_audio(tmp_path / f"s{i}.wav", synth_tone(2.5 + i, SR, seed=i), SR) for i in range(2)]
    results = {}
    for backend in ("torch", "onnxruntime"):
        code = run(["tag", *map(str, songs), "-m", str(ckpt), "-f", "json", "--backend", backend])
        out = capsys.readouterr().out
        assert code == 0
        results[backend] = [{t["tag"]: t["score"] for t in json.loads(line)["tags"]} for line in out.splitlines()]
    exported = [p.name for p in (cache_dir / "onnx").glob(f"{name}-*.onnx")]
    assert len([n for n in exported if n.count(".") == 1]) == 1  # exported once, into the cache folder
    for a, b in zip(results["torch"], results["onnxruntime"]):
        assert max(abs(a[k] - b[k]) for k in a) < 1e-5
    code = run(["tag", str(songs[0]), "-m", str(ckpt), "--backend", "onnxruntime", "--embeddings", str(tmp_path)])
    assert code == 2 and "torch backend" in capsys.readouterr().err


def test_backend_onnxruntime_library_jobs_run_one_thread_sessions(tmp_path, data_dir):
    """With -j 2 on two CPU threads the library stream runs ONNX Runtime sessions of one
    thread each, two batches at once, and gives torch's scores; the tagger's own sessions
    (all threads) are back afterwards."""
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel")
    songs = [write_audio(tmp_path / f"s{i}.wav", synth_tone(2.5 + i, SR, seed=i), SR) for i in range(4)]
    tagger = Tagger(ckpt, cache_dir=tmp_path / "cache", backend="onnxruntime", num_threads=2)
    whole = tagger.backend.network
    seen = []
    run_batch = tagger.score

    def probe(*args):
        seen.append(tagger.backend.network.get_session_options().intra_op_num_threads)
        return run_batch(*args)

    tagger.score = probe
    got = {i: res for i, _, res in tag_stream(tagger, songs, jobs=2)}
    assert seen and set(seen) == {1} and tagger.backend.network is whole
    assert whole.get_session_options().intra_op_num_threads == 2
    # no reference cycle keeps the sessions' thread pools alive past this test: later tests
    # fork (DataLoader workers), and a fork beside live threads can hang the child
    del tagger.score
    torch_tagger = Tagger(ckpt, cache_dir=tmp_path / "cache")
    for i, song in enumerate(songs):
        assert np.abs(got[i].scores - torch_tagger.tag_file(song).scores).max() < 1e-5
