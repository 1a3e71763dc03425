"""One prediction path: `evaluate` scores a clip with exactly the numbers `tag` prints.

Both go through the Tagger (decode the file, frame it, run the model, aggregate), so a
user who tags the test files of a dataset gets the scores behind the reported metrics,
and the reported accuracy is the arg-max of those scores.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from train_helpers import train_both_tasks

from audiocnn.cli.main import run
from audiocnn.datasets.manifest import read_manifest
from audiocnn.evaluation import evaluate
from audiocnn.tagging import TagOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple[Path, Path, str]]:
    """A single-label mel run and a multi-label waveform run: {task: (data_dir, run_dir, dataset)}."""
    return train_both_tasks(tmp_path_factory.mktemp("path"))


def _scores_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [k for k in rows[0] if k not in ("id", "path", "true", "predicted", "correct")]
    return {r["path"]: np.array([float(r[k]) for k in labels]) for r in rows}, labels


def _tag_csv(capsys, data: Path, run_dir: Path, files: list[Path], *extra: str) -> dict[str, np.ndarray]:
    assert (
        run(["--data-dir", str(data), "tag", *map(str, files), "--model", str(run_dir), "--format", "csv", *extra]) == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    labels = [k for k in rows[0] if k not in ("path", "duration", "windows", "predicted")]
    return {Path(r["path"]).name: np.array([float(r[k]) for k in labels]) for r in rows}, labels


@pytest.mark.parametrize("task", ["single-label", "multi-label"])
@pytest.mark.parametrize(("chunks", "tail"), [(None, "end"), (3, "end"), (None, "drop")])
def test_evaluate_scores_are_what_tag_prints(trained, capsys, task, chunks, tail, tmp_path):
    data, run_dir, _ = trained[task]
    manifest = read_manifest(data / ("tones" if task == "single-label" else "tags"))
    m = evaluate(
        run_dir,
        TagOptions(chunks=chunks, tail=tail),
        data_dir=data,
        split="test",
        device="cpu",
        plots=False,
        progress=False,
        out_dir=tmp_path / "eval",
    )
    assert m["n_clips"] == len(manifest.split("test")) == 4
    ev, ev_labels = _scores_csv(tmp_path / "eval" / "scores.csv")
    files = [manifest.audio_path(c) for c in manifest.split("test")]
    extra = (("--chunks", str(chunks)) if chunks else ()) + ("--tail", tail)
    tagged, tag_labels = _tag_csv(capsys, data, run_dir, files, *extra)
    assert tag_labels == ev_labels == list(manifest.labels)
    assert len(tagged) == len(ev) == 4
    for clip in manifest.split("test"):
        np.testing.assert_allclose(tagged[Path(clip.path).name], ev[clip.path], rtol=0, atol=1e-6)


def test_reported_accuracy_is_the_arg_max_of_the_scores(trained, tmp_path):
    data, run_dir, _ = trained["single-label"]
    manifest = read_manifest(data / "tones")
    m = evaluate(run_dir, data_dir=data, split="test", device="cpu", plots=False, progress=False, out_dir=tmp_path)
    scores, labels = _scores_csv(tmp_path / "scores.csv")
    hits = [labels[int(np.argmax(scores[c.path]))] == c.labels[0] for c in manifest.split("test")]
    assert m["accuracy"] == pytest.approx(np.mean(hits))
    cm = np.asarray(m["confusion_matrix"])
    assert np.trace(cm) == sum(hits)


def test_chunks_and_hop_do_not_mix(trained, capsys):
    data, run_dir, _ = trained["single-label"]
    clip = read_manifest(data / "tones").split("test")[0]
    path = read_manifest(data / "tones").audio_path(clip)
    assert (
        run(["--data-dir", str(data), "tag", str(path), "--model", str(run_dir), "--chunks", "3", "--hop", "0.1"]) == 2
    )
    err = capsys.readouterr().err
    assert "--chunks" in err and "Traceback" not in err
