"""`audiocnn tag` end to end through the CLI, with fixture checkpoints (and musicnn when present)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synth_tone, write_audio
from tag_fixtures import SR, make_checkpoint

from audiocnn.cli.main import run
from audiocnn.tagging import Tagger

torch.set_num_threads(1)

LABELS = ["rock", "jazz", "piano", "vocal"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "test-probe-mel", labels=LABELS)


@pytest.fixture(scope="module")
def ckpt_single(tmp_path_factory) -> Path:
    return make_checkpoint(
        tmp_path_factory.mktemp("ckpt1") / "genre.safetensors",
        "test-probe-wave",
        labels=["blues", "pop"],
        task="single-label",
    )


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    """Three good songs in nested folders plus a non-audio file."""
    d = tmp_path_factory.mktemp("music")
    write_audio(d / "a.wav", synth_tone(3.2, 22050, seed=1), 22050)
    write_audio(d / "sub" / "b.flac", synth_tone(2.1, 16000, freqs=(100.0, 900.0), seed=2), 16000)
    write_audio(d / "sub" / "deeper" / "c.ogg", synth_tone(1.5, SR, seed=3), SR, format="OGG", subtype="VORBIS")
    (d / "sub" / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    return d


def _tag(capsys, *args: str) -> tuple[int, str, str]:
    code = run(["tag", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_json_one_object_per_file_from_a_folder(capsys, ckpt, music):
    code, out, err = _tag(capsys, str(music), "--model", str(ckpt), "-f", "json", "--device", "cpu", "--tail", "drop")
    assert code == 0, err
    objs = [json.loads(line) for line in out.splitlines()]
    assert [Path(o["path"]).name for o in objs] == ["a.wav", "b.flac", "c.ogg"]  # sorted paths, recursive
    for o in objs:
        assert o["task"] == "multi-label" and o["activation"] == "sigmoid" and o["model"] == str(ckpt)
        scores = [t["score"] for t in o["tags"]]
        assert sorted(t["tag"] for t in o["tags"]) == sorted(LABELS) and scores == sorted(scores, reverse=True)
        assert o["windows"] >= 1 and o["duration"] > 0
    assert objs[0]["windows"] == 3 and objs[0]["duration"] == pytest.approx(3.2)
    assert "[3/3]" in err  # progress on stderr


def test_csv_one_row_per_file_one_column_per_label(capsys, ckpt, music):
    code, out, err = _tag(
        capsys, str(music / "a.wav"), str(music / "sub" / "*.flac"), "--model", str(ckpt), "--format", "csv"
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [Path(r["path"]).name for r in rows] == ["a.wav", "b.flac"]
    assert list(rows[0].keys()) == ["path", "duration", "windows", "predicted", *LABELS]
    for r in rows:
        assert all(0.0 <= float(r[label]) <= 1.0 for label in LABELS)


def test_table_top_k_and_scores_match_json(capsys, ckpt, music):
    f = str(music / "a.wav")
    code, out, _ = _tag(capsys, f, "--model", str(ckpt), "--top-k", "2", "--tail", "drop")
    assert code == 0
    lines = out.strip().splitlines()
    assert "sigmoid scores (multi-label" in lines[0] and "3 windows" in lines[0]
    rows = [re.match(r"\s+(\d+)\s+(\S+)\s+([0-9.]+)$", line) for line in lines[2:-1]]
    assert len(rows) == 2 and all(rows) and lines[-1].lstrip().startswith("predicted: ")
    _, js, _ = _tag(capsys, f, "--model", str(ckpt), "--format", "json", "--tail", "drop")
    best = json.loads(js)["tags"][:2]
    assert [m.group(2) for m in rows] == [t["tag"] for t in best]
    assert [float(m.group(3)) for m in rows] == pytest.approx([t["score"] for t in best], abs=6e-4)


def test_table_shows_readable_labels_and_json_keeps_the_dataset_form(capsys, music, tmp_path):
    labels = ["genre---rock", "instrument---piano", "mood/theme---happy", "plain"]
    ck = make_checkpoint(tmp_path / "mtg.safetensors", "test-probe-mel", labels=labels)
    f = str(music / "a.wav")
    _, out, _ = _tag(capsys, f, "--model", str(ck), "--threshold", "0")
    assert "---" not in out
    for shown in ("genre:rock", "instrument:piano", "mood/theme:happy", "plain"):
        assert re.search(rf"^\s+\d+\s+{re.escape(shown)}\s+[0-9.]+$", out, re.M), shown
        assert shown in out.strip().splitlines()[-1]  # the predicted line too
    _, js, _ = _tag(capsys, f, "--model", str(ck), "--format", "json")
    assert {t["tag"] for t in json.loads(js)["tags"]} == set(labels)


def test_single_label_table_says_softmax(capsys, ckpt_single, music):
    code, out, _ = _tag(capsys, str(music / "a.wav"), "--model", str(ckpt_single))
    assert code == 0 and "softmax probabilities" in out
    _, js, _ = _tag(capsys, str(music / "a.wav"), "--model", str(ckpt_single), "--format", "json")
    assert sum(t["score"] for t in json.loads(js)["tags"]) == pytest.approx(1.0, abs=1e-5)


def test_window_hop_aggregate_options(capsys, ckpt, music):
    f = str(music / "a.wav")
    base = ["--model", str(ckpt), "--format", "json", "--tail", "drop"]
    _, mean_out, _ = _tag(capsys, f, *base, "--window", "0.5", "--hop", "0.25")
    _, max_out, _ = _tag(capsys, f, *base, "--window", "0.5", "--hop", "0.25", "--aggregate", "max")
    m, x = json.loads(mean_out), json.loads(max_out)
    assert m["windows"] == x["windows"] == 11 and m["hop_seconds"] == pytest.approx(0.256)
    ms, xs = ({t["tag"]: t["score"] for t in o["tags"]} for o in (m, x))
    assert all(xs[k] >= ms[k] - 1e-6 for k in LABELS) and any(xs[k] > ms[k] + 1e-4 for k in LABELS)


def test_a_corrupt_file_is_reported_and_skipped(capsys, ckpt, music, tmp_path):
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + os.urandom(64))
    good = [str(music / "a.wav"), str(music / "sub" / "b.flac")]
    code, out, err = _tag(capsys, good[0], str(bad), good[1], "--model", str(ckpt), "--format", "json")
    assert code == 1
    assert [json.loads(line)["path"] for line in out.splitlines()] == good
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.mp3" in errors[0]


def test_missing_path_fails_but_others_are_tagged(capsys, ckpt, music, tmp_path):
    code, out, err = _tag(
        capsys, str(tmp_path / "nope.wav"), str(music / "a.wav"), "--model", str(ckpt), "--format", "json"
    )
    assert code == 1 and len(out.splitlines()) == 1 and "nope.wav: no such file" in err
    code, out, err = _tag(capsys, str(tmp_path / "*.wav"), "--model", str(ckpt))
    assert code == 2 and out == "" and "nothing to tag" in err


def test_taggram_and_embeddings_files(capsys, ckpt, music, tmp_path):
    tg, emb = tmp_path / "tg", tmp_path / "emb"
    code, out, err = _tag(
        capsys,
        str(music),
        "--model",
        str(ckpt),
        "--format",
        "json",
        "--taggram",
        str(tg),
        "--embeddings",
        str(emb),
        "--hop",
        "0.5",
    )
    assert code == 0, err
    objs = {Path(o["path"]).stem: o for o in map(json.loads, out.splitlines())}
    for stem in ("a", "b", "c"):
        a = np.load(tg / f"{stem}.taggram.npy")
        assert a.shape == (objs[stem]["windows"], len(LABELS)) and ((a >= 0) & (a <= 1)).all()
        best = objs[stem]["tags"][0]
        np.testing.assert_allclose(a.mean(axis=0)[LABELS.index(best["tag"])], best["score"], atol=1e-5)
        rows = list(csv.reader((tg / f"{stem}.taggram.csv").open()))
        assert rows[0] == ["start_s", "end_s", *LABELS] and len(rows) == a.shape[0] + 1
        assert float(rows[2][0]) == pytest.approx(0.496)  # hop 0.5 s -> 31 frames of 16 ms
        assert (tg / f"{stem}.taggram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        e = np.load(emb / f"{stem}.embeddings.npy")
        assert e.shape == (a.shape[0], 16) and np.isfinite(e).all()
        assert objs[stem]["taggram"] == str(tg / f"{stem}.taggram.npy")


def test_same_stem_in_two_folders_gets_two_outputs(capsys, ckpt, tmp_path):
    write_audio(tmp_path / "x" / "song.wav", synth_tone(1.2, SR, seed=4), SR)
    write_audio(tmp_path / "y" / "song.wav", synth_tone(1.2, SR, seed=5), SR)
    code, _, _ = _tag(
        capsys, str(tmp_path / "x"), str(tmp_path / "y"), "--model", str(ckpt), "--taggram", str(tmp_path / "tg")
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "tg").glob("*.npy")) == ["song-2.taggram.npy", "song.taggram.npy"]


def test_a_later_run_never_writes_over_another_songs_outputs(capsys, ckpt, tmp_path):
    """Two runs, two songs with one base name: each keeps its own files, which say whose they are."""
    songs = [write_audio(tmp_path / d / "song.wav", synth_tone(1.2, SR, seed=i), SR) for i, d in enumerate("xy")]
    tg, emb = tmp_path / "tg", tmp_path / "emb"
    outputs = ("--taggram", str(tg), "--embeddings", str(emb), "-f", "json")
    for song in [*songs, songs[0]]:  # the first song again: it finds its own files
        code, out, _ = _tag(capsys, str(song), "--model", str(ckpt), *outputs)
        assert code == 0
        assert json.loads(out)["taggram"] == str(tg / f"song{'' if song == songs[0] else '-2'}.taggram.npy")
    assert sorted(p.name for p in tg.glob("*.npy")) == ["song-2.taggram.npy", "song.taggram.npy"]
    assert sorted(p.name for p in emb.glob("*.npy")) == ["song-2.embeddings.npy", "song.embeddings.npy"]
    for folder in (tg, emb):
        for stem, song in (("song", songs[0]), ("song-2", songs[1])):
            assert json.loads((folder / f"{stem}.source.json").read_text()) == {"source": str(song)}
    a = Tagger(ckpt).tag_file(songs[1], taggram=True)
    assert np.allclose(np.load(tg / "song-2.taggram.npy"), a.taggram, atol=1e-6)


def test_fifo_and_device_are_said_to_be_no_regular_files(capsys, ckpt, music, tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    code, _, err = _tag(capsys, str(fifo), "/dev/zero", str(music / "a.wav"), "--model", str(ckpt))
    assert code == 1 and "tagged 1 of 3 files" in err
    assert f"error: {fifo}: not a regular file (a FIFO)" in err
    assert "error: /dev/zero: not a regular file (a device)" in err


_LIMITED = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
sys.path.insert(0, {tests!r})
import tag_fixtures
from audiocnn.cli.main import run
for args in json.loads(sys.argv[1]):
    print(run(args), flush=True)
"""


def test_sizes_that_would_eat_the_machine_are_refused(ckpt, tmp_path):
    """Each is one line saying the limit. Run in a process limited to 2 GiB and 60 s, so
    that a regression fails here instead of taking the machine down."""
    song = str(write_audio(tmp_path / "three.wav", synth_tone(3.0, SR), SR))
    cases = {
        "--window 30000": "at most 10.00 s, 10 times its input of 1.00 s",  # was 24 GB, OOM-killed
        "--window 1e9": "at most 10.00 s",  # was "Unable to allocate 58.2 TiB"
        "--chunks 1000000": "must be at most 256",  # ran for minutes
    }
    runs = [["tag", song, "-m", str(ckpt), *option.split()] for option in cases]
    script = _LIMITED.format(tests=str(Path(__file__).resolve().parent))
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(runs)], capture_output=True, text=True, timeout=60)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.stdout.split() == ["2", "2", "2"] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for (option, limit), line in zip(cases.items(), errors, strict=True):
        assert option.split()[0] in line and limit in line, (option, line)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line_error(capsys, ckpt, music):
    code, out, err = _tag(capsys, str(music / "a.wav"), "--model", str(ckpt), "--device", "cuda")
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: --device cuda: CUDA is not available")
    assert not any("Traceback" in line for line in lines)


def test_bad_option_values_are_usage_errors(capsys, ckpt, music):
    f = str(music / "a.wav")
    for extra, word in (
        (["--format", "xml"], "--format"),
        (["--aggregate", "median"], "--aggregate"),
        (["--top-k", "0"], "--top-k"),
        (["--window", "-1"], "--window"),
        (["--batch-size", "0"], "--batch-size"),  # from test_inference: the library says batch_size
        (["--tail", "pad"], "--tail"),
    ):
        code, out, err = _tag(capsys, f, "--model", str(ckpt), *extra)
        assert code == 2 and word in err and out == ""


def test_unwritable_output_folder_is_one_line(capsys, ckpt, music, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = _tag(capsys, str(music / "a.wav"), "--model", str(ckpt), "--taggram", str(blocker / "tg"))
    assert code == 2 and out == "" and err.strip().splitlines()[-1].startswith("error: --taggram")


def test_unknown_model_name_is_one_line(capsys, music, tmp_path):
    code, out, err = _tag(capsys, str(music / "a.wav"), "--model", str(tmp_path / "missing.safetensors"))
    assert code == 1 and "missing.safetensors: no such checkpoint file" in err and out == ""


# --------------------------------------------------------------------------- musicnn reference


def _reference_dir() -> Path:
    env = os.environ.get("AUDIOCNN_MUSICNN_REFERENCE")
    return Path(env) if env else Path(__file__).resolve().parent / "data" / "musicnn"


def _musicnn_ready() -> str | None:
    """Why the musicnn end-to-end test cannot run here, or None when it can."""
    try:
        from audiocnn.pretrained import resolve_model  # noqa: F401
    except ImportError:
        return "audiocnn.pretrained.resolve_model is not available in this build"
    import importlib.util

    if importlib.util.find_spec("musicnn") is None:
        return "musicnn is not installed (pip install --no-deps musicnn==0.1.0)"
    if not (_reference_dir() / "chorale.flac").is_file():
        return f"no musicnn reference outputs at {_reference_dir()} (set AUDIOCNN_MUSICNN_REFERENCE)"
    return None


@pytest.fixture(scope="module")
def musicnn_data_dir(tmp_path_factory) -> Path:
    """One data dir for the musicnn tests (musicnn-mtt imports into the session's cache on first use)."""
    return tmp_path_factory.mktemp("musicnn-data")


@pytest.mark.slow
@pytest.mark.skipif(_musicnn_ready() is not None, reason=str(_musicnn_ready()))
def test_musicnn_mtt_reproduces_the_reference_taggram(capsys, musicnn_data_dir):
    ref_dir = _reference_dir()
    ref = np.load(ref_dir / "chorale.MTT_musicnn.npz")
    code = run(
        [
            "--data-dir",
            str(musicnn_data_dir),
            "tag",
            str(ref_dir / "chorale.flac"),
            "--model",
            "musicnn-mtt",
            "--format",
            "json",
            "--tail",
            "drop",  # musicnn scores no tail shorter than a window
        ]
    )
    cap = capsys.readouterr()
    assert code == 0, cap.err
    got = json.loads(cap.out)
    assert got["windows"] == ref["taggram"].shape[0] and got["activation"] == "sigmoid"
    scores = {t["tag"]: t["score"] for t in got["tags"]}
    expect = ref["taggram"].mean(axis=0)
    tags = [str(t) for t in ref["tags"]]
    assert sorted(scores) == sorted(tags)
    np.testing.assert_allclose([scores[t] for t in tags], expect, atol=2e-3)
    assert [t["tag"] for t in got["tags"][:5]] == [tags[i] for i in np.argsort(-expect)[:5]]


@pytest.mark.slow
@pytest.mark.skipif(_musicnn_ready() is not None, reason=str(_musicnn_ready()))
def test_shipped_example_gives_the_first_reference_patches(capsys, musicnn_data_dir, tmp_path):
    """examples/chorale.flac is the first 15 s of the piece: its five windows are the
    reference's first five patches."""
    example = Path(__file__).resolve().parents[1] / "examples" / "chorale.flac"
    ref = np.load(_reference_dir() / "chorale.MTT_musicnn.npz")
    code = run(
        [
            *("--data-dir", str(musicnn_data_dir), "tag", str(example), "--format", "json"),
            *("--taggram", str(tmp_path), "--tail", "drop"),
        ]
    )
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert json.loads(cap.out)["windows"] == 5
    np.testing.assert_allclose(np.load(tmp_path / "chorale.taggram.npy"), ref["taggram"][:5], atol=2e-3)
