"""`audiocnn tag` on ONNX Runtime without torch: the default on a CPU, its scores equal to
torch's for every architecture of the zoo, torch never imported, memory flat on long songs,
and the ways `auto` picks torch instead."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from audiocnn.cli.main import run
from audiocnn.models.registry import builtin_models
from audiocnn.tagging import Tagger, backends
from audiocnn.tagging.ort_backend import OrtBackend, onnx_files
from audiocnn.tagging.stream import tag_stream
from audiocnn.tagging.torch_backend import TorchBackend
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.testing.models import SR, make_checkpoint

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install audiocnn[onnx])")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chorale.flac"
LABELS = ["rock", "jazz", "piano", "vocal"]


@pytest.mark.parametrize("arch", builtin_models())
def test_both_engines_give_the_same_scores_on_real_music(arch, tmp_path, cache_dir):
    """Every architecture of the zoo, on the example song (15 s of real music, decoded and
    resampled as `tag` does; the ONNX engine streams its mel in 4 s blocks): the
    per-window scores of ONNX Runtime equal torch's to 1e-5."""
    ckpt = make_checkpoint(tmp_path / f"{arch}.safetensors", arch, labels=LABELS, seed=1)
    fast = Tagger(ckpt, backend="onnxruntime", block_seconds=4.0)
    assert isinstance(fast.backend, OrtBackend) and fast.model is None
    slow = Tagger(ckpt, backend="torch")
    a, b = (t.tag_file(EXAMPLE, taggram=True) for t in (slow, fast))
    assert a.num_windows == b.num_windows >= 1 and a.framing == b.framing
    assert np.abs(a.taggram - b.taggram).max() < 1e-5, arch
    assert a.taggram.std() > 1e-4  # scores that differ between windows and tags: a real comparison


def test_a_waveform_front_end_that_normalizes_runs_the_same_on_both_engines(tmp_path, cache_dir):
    """A waveform model whose front-end scales each window to unit RMS (the engine does it
    in numpy before the network) scores a quiet song as torch does."""
    from audiocnn.features import WaveformConfig

    ckpt = make_checkpoint(
        tmp_path / "w.safetensors",
        "samplecnn",
        labels=LABELS,
        frontend=WaveformConfig(sample_rate=22050, normalize=True),
    )
    song = write_audio(tmp_path / "quiet.wav", 0.05 * synth_tone(8.0, 22050, seed=3), 22050)
    a, b = (Tagger(ckpt, backend=name).tag_file(song, taggram=True) for name in ("torch", "onnxruntime"))
    assert np.abs(a.taggram - b.taggram).max() < 1e-5 and a.taggram.std() > 1e-4


def test_a_whole_tag_run_never_imports_torch(tmp_path, cache_dir):
    """Once the export is in the cache, a full `tag` (one song with a taggram, then a
    library run into a results file with two decoding workers, then its resume) runs in a
    process that never imports torch, and gives the torch engine's scores."""
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel", labels=LABELS)
    music = tmp_path / "music"
    for i in range(3):
        write_audio(music / f"s{i}.wav", synth_tone(2.0 + i, SR, seed=i), SR)
    assert run(["tag", str(music / "s0.wav"), "-m", str(ckpt)]) == 0  # exports into the cache
    results = tmp_path / "tags.jsonl"
    one, lib = [str(music / "s0.wav"), "-m", str(ckpt)], [str(music), "-m", str(ckpt), "--output", str(results)]
    code = (
        "import sys; from audiocnn.cli.main import run; "
        f"assert run(['tag', *{one!r}, '--taggram', {str(tmp_path / 'tg')!r}]) == 0; "
        f"assert run(['tag', *{lib!r}, '-j', '2']) == 0; "
        f"assert run(['tag', *{lib!r}]) == 0; "
        "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("no torch"), done.stderr
    assert "exported" not in done.stderr  # the cache's export was used
    records = [json.loads(line) for line in results.read_text().splitlines()[1:]]
    assert len(records) == 3 and (tmp_path / "tg" / "s0.taggram.npy").is_file()
    torch_tagger = Tagger(ckpt, backend="torch")
    for r in records:
        want = torch_tagger.tag_file(r["path"]).scores
        got = np.array([dict((t["tag"], t["score"]) for t in r["tags"])[k] for k in LABELS])
        assert np.abs(got - want).max() < 2e-6  # records round scores to 6 digits


def test_auto_is_onnxruntime_on_a_cpu_and_says_when_it_exports(tmp_path, cache_dir, capsys):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel", labels=LABELS)
    song = write_audio(tmp_path / "s.wav", synth_tone(2.0, SR), SR)
    assert run(["tag", str(song), "-m", str(ckpt), "-f", "json"]) == 0
    first = capsys.readouterr()
    assert "exported" in first.err and " s, checked against torch" in first.err
    assert sorted(p.name.split(".", 1)[1] for p in (cache_dir / "onnx").iterdir()) == [
        "frames.onnx",
        "frontend.onnx",
        "onnx",
    ]
    assert run(["tag", str(song), "-m", str(ckpt), "-f", "json"]) == 0
    again = capsys.readouterr()
    assert "exported" not in again.err and json.loads(again.out) == json.loads(first.out)
    tagger = Tagger(ckpt, backend="auto", device="cpu")
    assert isinstance(tagger.backend, OrtBackend)


def test_auto_takes_torch_for_what_only_torch_does(tmp_path, cache_dir, monkeypatch):
    """An accelerator that may be there, a device asked for, or onnxruntime missing: torch;
    the per-window arrays and windows of another length: torch (tag_command decides)."""
    assert backends.auto_backend("cpu")[0] == backends.auto_backend("auto")[0] == "onnxruntime"
    assert backends.auto_backend("cuda:1") == ("torch", "device=cuda:1")
    monkeypatch.setattr(backends, "visible_accelerator", lambda: "an NVIDIA GPU (/dev/nvidia0)")
    assert backends.auto_backend("auto")[0] == "torch" and backends.auto_backend("cpu")[0] == "onnxruntime"
    monkeypatch.undo()
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    assert backends.auto_backend("cpu") == ("torch", "onnxruntime is not installed")
    monkeypatch.undo()
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel", labels=LABELS)
    song = write_audio(tmp_path / "s.wav", synth_tone(2.0, SR), SR)
    for extra in (["--embeddings", str(tmp_path / "e")], ["--window", "0.5"]):
        assert run(["tag", str(song), "-m", str(ckpt), *extra]) == 0
        assert not (cache_dir / "onnx").exists(), extra  # torch ran: nothing was exported


def test_visible_accelerator_reads_the_cuda_mask(monkeypatch):
    from audiocnn import accelerators

    monkeypatch.setattr(accelerators.glob, "glob", lambda pattern: ["/dev/nvidia0"])
    monkeypatch.setattr(accelerators.sys, "platform", "linux")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert accelerators.visible_accelerator() == "an NVIDIA GPU (/dev/nvidia0)"
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert accelerators.visible_accelerator() is None


def test_auto_falls_back_to_torch_when_the_export_fails(tmp_path, cache_dir, monkeypatch, caplog):
    from audiocnn.tagging import export

    def broken(*args, **kwargs):
        raise export.ExportError("the ONNX network differs from the torch model by 3.1e-02")

    monkeypatch.setattr(export, "export_onnx", broken)
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel", labels=LABELS)
    with caplog.at_level("WARNING"):
        tagger = Tagger(ckpt, backend="auto")
    assert isinstance(tagger.backend, TorchBackend)
    assert "tagging with torch instead of ONNX Runtime (the ONNX network differs" in caplog.text
    with pytest.raises(export.ExportError):
        Tagger(ckpt, backend="onnxruntime")


def test_a_cache_with_only_part_of_an_export_is_exported_again(tmp_path, cache_dir):
    """An export of an older audiocnn (no .frames.onnx) or one cut short: the missing file
    is written on the next use instead of failing."""
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel", labels=LABELS)
    Tagger(ckpt, backend="onnxruntime")
    files = onnx_files(ckpt)
    files.frames.unlink()
    assert files.missing() == [files.frames]
    tagger = Tagger(ckpt, backend="onnxruntime")
    assert files.missing() == [] and isinstance(tagger.backend, OrtBackend)


def test_a_long_song_stays_in_flat_memory_on_onnxruntime(tmp_path, cache_dir):
    """A 4-minute song through the ONNX engine holds one block and one window at a time
    (the whole decoded song would take 7.7 MB at 8 kHz, its mel more)."""
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel", labels=LABELS)
    long_song = write_audio(tmp_path / "long.wav", synth_tone(240.0, SR), SR)
    short_song = write_audio(tmp_path / "short.wav", synth_tone(24.0, SR), SR)
    tagger = Tagger(ckpt, backend="onnxruntime", block_seconds=5.0)
    peaks = []
    for song in (short_song, long_song):
        tracemalloc.start()
        try:
            ((_, _, res),) = tag_stream(tagger, [song])
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert res.num_windows > 0
    assert peaks[1] < 2_000_000 and peaks[1] < 1.5 * peaks[0] + 200_000, peaks
    assert tagger.stats.max_buffered < 6 * SR  # samples of one block and the frame overlap
