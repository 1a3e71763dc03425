"""Decisions, not only scores: per-tag thresholds picked on the validation split, stored in
the checkpoint, used by `evaluate` (precision / recall / F1) and by `tag` (`predicted`)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from tag_fixtures import make_checkpoint
from train_helpers import train_both_tasks

from audiocnn.cli.main import run
from audiocnn.datasets.manifest import read_manifest
from audiocnn.errors import CheckpointError
from audiocnn.evaluation import evaluate
from audiocnn.models.checkpoint import read_metadata, thresholds_of
from audiocnn.tagging import TagOptions
from audiocnn.training.metrics import best_f1_thresholds, compute_metrics, decision_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- picking and scoring thresholds ------------------------------------------------------


def test_best_f1_threshold_by_hand():
    # tag a: scores .9(+) .7(-) .6(+) .2(-): cut after .9 -> F1 2/3, after .6 -> F1 4/5 (best),
    #        so the threshold lies halfway between .6 and .2
    # tag b: no positive clip -> the fallback
    # tag c: every clip positive -> predicting all is F1 1: halfway between the lowest score and 0
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    s = np.array([[0.9, 0.3, 0.8], [0.7, 0.1, 0.4], [0.6, 0.2, 0.6], [0.2, 0.9, 0.5]])
    cut = best_f1_thresholds(y, s, fallback=0.5)
    assert cut == pytest.approx([0.4, 0.5, 0.2])
    pred = s >= cut
    assert pred[:, 0].tolist() == [True, True, True, False] and pred[:, 1].tolist() == [False, False, False, True]
    assert pred[:, 2].all()


def test_best_f1_threshold_never_splits_tied_scores():
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.8], [0.5], [0.5], [0.1]])  # the tied .5 clips go together
    cut = best_f1_thresholds(y, s)
    assert (s[1, 0] >= cut[0]) == (s[2, 0] >= cut[0])
    f1 = decision_metrics(y, s >= cut)["f1_macro"]
    assert f1 == pytest.approx(max(2 / 3, 4 / 5))  # better than stopping at .8 alone (F1 2/3)


def test_decision_metrics_by_hand():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.7], [0.6, 0.3]])
    m = compute_metrics(y, s, "multi-label", ["a", "b"], thresholds=[0.5, 0.75])
    # a at .5: predicted clips 0, 3 -> tp 1, fp 1, fn 1: P 1/2, R 1/2, F1 1/2
    # b at .75: predicted clip 1 -> tp 1, fp 0, fn 1: P 1, R 1/2, F1 2/3
    a, b = m["per_tag"]
    assert (a["threshold"], a["precision"], a["recall"], a["f1"]) == pytest.approx((0.5, 0.5, 0.5, 0.5))
    assert (b["threshold"], b["precision"], b["recall"], b["f1"]) == pytest.approx((0.75, 1.0, 0.5, 2 / 3))
    assert m["precision_macro"] == pytest.approx(0.75) and m["recall_macro"] == pytest.approx(0.5)
    assert m["f1_macro"] == pytest.approx((0.5 + 2 / 3) / 2)
    # micro: tp 2, fp 1, fn 2
    assert m["precision_micro"] == pytest.approx(2 / 3) and m["recall_micro"] == pytest.approx(0.5)
    assert m["f1_micro"] == pytest.approx(4 / 7)
    assert compute_metrics(y, s, "multi-label", ["a", "b"])["per_tag"][1]["threshold"] == 0.5  # the default


def test_single_label_decisions_are_the_arg_max():
    targets = np.array([0, 0, 1, 2])
    scores = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.2, 0.2, 0.6]])
    m = compute_metrics(targets, scores, "single-label", ["x", "y", "z"])
    assert m["precision_micro"] == m["recall_micro"] == pytest.approx(m["accuracy"]) == pytest.approx(0.75)
    assert m["per_tag"][1]["precision"] == pytest.approx(0.5) and m["per_tag"][0]["recall"] == pytest.approx(0.5)
    assert "threshold" not in m["per_tag"][0]


def test_malformed_stored_thresholds_are_refused():
    meta = {"labels": ["a", "b"], "thresholds": [0.2, 0.4]}
    assert thresholds_of(meta) == [0.2, 0.4]
    assert thresholds_of({"labels": ["a"]}) is None
    for bad in ([0.2], [0.2, 1.5], [0.2, "x"], "0.5"):
        with pytest.raises(CheckpointError, match="thresholds"):
            thresholds_of({"labels": ["a", "b"], "thresholds": bad})


# -- through train, evaluate and tag -----------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A multi-label and a single-label run: {task: (data_dir, run_dir, dataset)}."""
    return train_both_tasks(tmp_path_factory.mktemp("decide"))


def _eval(data, run_dir, split, out, **options):
    return evaluate(
        run_dir,
        TagOptions(**options),
        data_dir=data,
        split=split,
        device="cpu",
        plots=False,
        progress=False,
        out_dir=out,
    )


def _scores(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [k for k in rows[0] if k not in ("id", "path", "true", "predicted", "correct")]
    return [r["path"] for r in rows], np.array([[float(r[k]) for k in labels] for r in rows])


def test_thresholds_are_picked_on_valid_and_round_trip_the_checkpoint(trained, tmp_path):
    data, run_dir, name = trained["multi-label"]
    manifest = read_manifest(data / name)
    meta = read_metadata(run_dir / "best.safetensors")
    stored = thresholds_of(meta)
    assert stored is not None and len(stored) == len(meta["labels"]) == len(manifest.labels)
    # the validation scores the run saw are what evaluate computes with the run's chunks
    _eval(data, run_dir, "valid", tmp_path / "valid", chunks=3)
    paths, scores = _scores(tmp_path / "valid" / "scores.csv")
    clips = {c.path: c for c in manifest.split("valid")}
    y = np.array([[lab in clips[p].labels for lab in manifest.labels] for p in paths], dtype=int)
    assert stored == pytest.approx(best_f1_thresholds(y, scores).tolist(), abs=1e-5)


def test_evaluate_decides_at_the_stored_thresholds(trained, tmp_path):
    data, run_dir, name = trained["multi-label"]
    manifest = read_manifest(data / name)
    stored = np.asarray(thresholds_of(read_metadata(run_dir / "best.safetensors")))
    m = _eval(data, run_dir, "test", tmp_path)
    assert m["thresholds"].startswith("checkpoint")
    paths, scores = _scores(tmp_path / "scores.csv")
    clips = {c.path: c for c in manifest.split("test")}
    y = np.array([[lab in clips[p].labels for lab in manifest.labels] for p in paths], dtype=int)
    want = decision_metrics(y, scores >= stored)
    for key in ("precision_macro", "recall_macro", "f1_macro", "precision_micro", "recall_micro", "f1_micro"):
        assert m[key] == pytest.approx(want[key]), key
    with open(tmp_path / "per_tag.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["label", "n_positive", "roc_auc", "pr_auc", "threshold", "precision", "recall", "f1"]
    assert [float(r["threshold"]) for r in rows] == pytest.approx(stored.tolist(), abs=1e-6)
    everything = _eval(data, run_dir, "test", tmp_path / "zero", threshold=0.0)
    assert everything["recall_micro"] == 1.0 and everything["thresholds"] == "--threshold 0"


def _tag_json(capsys, data, model, files, *extra):
    argv = ["--data-dir", str(data), "tag", *map(str, files), "--model", str(model), "--format", "json", *extra]
    assert run(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_tag_predicts_the_tags_above_their_thresholds(trained, capsys):
    data, run_dir, name = trained["multi-label"]
    manifest = read_manifest(data / name)
    stored = thresholds_of(read_metadata(run_dir / "best.safetensors"))
    cut = dict(zip(manifest.labels, stored))
    files = [manifest.audio_path(c) for c in manifest.split("test")]
    for obj in _tag_json(capsys, data, run_dir, files):
        scores = {t["tag"]: t["score"] for t in obj["tags"]}
        assert obj["predicted"] == [t for t, s in sorted(scores.items(), key=lambda kv: -kv[1]) if s >= cut[t] - 1e-6]
    for obj in _tag_json(capsys, data, run_dir, files, "--threshold", "0"):
        assert sorted(obj["predicted"]) == sorted(manifest.labels)
    for obj in _tag_json(capsys, data, run_dir, files, "--threshold", "1"):
        assert obj["predicted"] == [t["tag"] for t in obj["tags"] if t["score"] >= 1.0]
    argv = ["--data-dir", str(data), "tag", str(files[0]), "--model", str(run_dir), "--format", "csv"]
    assert run([*argv, "--threshold", "0"]) == 0
    row = next(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert sorted(row["predicted"].split(";")) == sorted(manifest.labels)
    assert run(["--data-dir", str(data), "tag", str(files[0]), "--model", str(run_dir), "--threshold", "0"]) == 0
    assert "predicted: " in capsys.readouterr().out
    assert run([*argv, "--threshold", "1.5"]) == 2


def test_single_label_predicts_the_arg_max(trained, capsys):
    data, run_dir, name = trained["single-label"]
    manifest = read_manifest(data / name)
    files = [manifest.audio_path(c) for c in manifest.split("test")]
    for obj in _tag_json(capsys, data, run_dir, files, "--threshold", "0.99"):  # a threshold changes nothing
        assert obj["predicted"] == [obj["tags"][0]["tag"]]


def test_checkpoint_without_thresholds_decides_at_one_half(tmp_path, capsys, audio_dir):
    from audiocnn.tagging import Tagger

    ckpt = make_checkpoint(tmp_path / "probe.safetensors")  # like a pretrained import: no thresholds
    tagger = Tagger(ckpt, device="cpu")
    assert tagger.thresholds is None
    scores = np.array([0.7, 0.2, 0.5, 0.49], dtype=np.float32)
    assert tagger.decide(scores) == (["rock", "piano"], "score >= 0.5 (no stored thresholds)")
    assert tagger.decide(scores, 0.1)[0] == ["rock", "piano", "vocal", "jazz"]
