"""What a new user meets in the first hour, and every day after (issue 21): where data and
caches live, labels beside the audio, evaluate's outputs a user can act on, the small
things (wording, help, timing) of the CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import synth_tone, write_audio

from audiocnn.cli.main import run

NO_MUSICNN = importlib.util.find_spec("musicnn") is None


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --------------------------------------------------------------------------- 1. the cache folder


@pytest.mark.skipif(NO_MUSICNN, reason="musicnn is not installed (pip install --no-deps musicnn==0.1.0)")
def test_tag_from_a_second_folder_writes_nothing_there_and_imports_once(tmp_path, cache_dir, monkeypatch, capsys):
    import audiocnn.pretrained as pretrained

    monkeypatch.delenv("AUDIOCNN_DATA_DIR", raising=False)  # the default data folder: ./data
    song = write_audio(tmp_path / "song.wav", synth_tone(3.5, 16000), 16000)
    first, second = tmp_path / "project-a", tmp_path / "project-b"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    assert run(["tag", str(song), "--device", "cpu"]) == 0
    (imported,) = (cache_dir / "pretrained").iterdir()
    assert imported.name.startswith("musicnn-mtt-")
    stamp = imported.stat().st_mtime_ns
    capsys.readouterr()

    def no_second_import(*args, **kw):
        raise AssertionError("musicnn-mtt was imported again")

    monkeypatch.setattr(pretrained, "import_musicnn", no_second_import)
    monkeypatch.chdir(second)
    assert run(["tag", str(song), "--device", "cpu"]) == 0
    assert _files(second) == [] and _files(first) == []  # nothing in either working folder
    assert [p.name for p in (cache_dir / "pretrained").iterdir()] == [imported.name]
    assert imported.stat().st_mtime_ns == stamp


def test_default_cache_folder_follows_xdg_and_the_override(tmp_path, monkeypatch):
    from audiocnn.constants import default_cache_dir

    monkeypatch.delenv("AUDIOCNN_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "audiocnn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "audiocnn"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: a relative path is invalid
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "audiocnn"
    monkeypatch.setenv("AUDIOCNN_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize("command", [["info", "mine"], ["verify", "mine"], ["evaluate", "RUN", "--dataset", "mine"]])
def test_a_missing_dataset_names_the_absolute_folder_and_how_to_point_elsewhere(tmp_path, monkeypatch, capsys, command):
    monkeypatch.delenv("AUDIOCNN_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    if "RUN" in command:
        from tag_fixtures import make_checkpoint

        ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-wave")
        command = [c.replace("RUN", str(ckpt)) for c in command]
        command += ["--device", "cpu"]
    assert run(command) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"mine is not prepared under {tmp_path / 'data'}" in line
    assert "--data-dir" in line and "AUDIOCNN_DATA_DIR" in line


# --------------------------------------------------------------------------- 4. --labels beside the audio


def _clips_with_csv(src: Path, n: int = 6) -> None:
    rows = ["path,labels"]
    for i in range(n):
        label = ("low", "high")[i % 2]
        write_audio(src / f"clip{i}.wav", synth_tone(1.0, 16000, freqs=((220.0,), (1760.0,))[i % 2], seed=i), 16000)
        rows.append(f"clip{i}.wav,{label}")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")


def test_labels_csv_is_found_beside_the_audio_and_said_where(tmp_path, data_dir, monkeypatch, capsys):
    from dataset_fixtures import run_cli

    src, elsewhere = tmp_path / "clips", tmp_path / "elsewhere"
    _clips_with_csv(src)
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no labels.csv here: README's `--source ~/clips --labels labels.csv`
    code, _out, err = run_cli(
        capsys, "prepare", "folder", "--source", str(src), "--labels", "labels.csv", "--name", "m"
    )
    assert code == 0, err
    assert f"labels: {src / 'labels.csv'} (found in source)" in err
    code, _out, err = run_cli(capsys, "prepare", "folder", "--source", str(src), "--labels", "nope.csv", "--name", "n")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert f"--labels nope.csv: no such file ({elsewhere / 'nope.csv'} nor {src / 'nope.csv'})" in line


# --------------------------------------------------------------------------- 5. evaluate's outputs


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("task", ["single-label", "multi-label"])
def test_evaluate_writes_truth_decisions_and_the_misclassified_clips(tmp_path, capsys, task):
    from tag_fixtures import make_checkpoint
    from train_helpers import MULTI_LABELS, SINGLE_LABELS, make_dataset

    from audiocnn.datasets.manifest import read_manifest

    data = tmp_path / "data"
    data.mkdir()
    make_dataset(data, "tones", task, n_train=3, n_valid=3, n_test=6)
    labels = sorted(SINGLE_LABELS if task == "single-label" else MULTI_LABELS)
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel", labels=labels, task=task)
    out = tmp_path / "ev"
    args = ["--data-dir", str(data), "evaluate", str(ckpt), "--dataset", "tones", "--device", "cpu", "--no-plots"]
    assert run([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _csv_rows(out / "scores.csv")
    assert list(rows[0])[:5] == ["id", "path", "true", "predicted", "correct"] and list(rows[0])[5:] == labels
    truth = {c.id: ";".join(sorted(c.labels)) for c in read_manifest(data / "tones").split("test")}
    assert {r["id"]: r["true"] for r in rows} == truth
    for r in rows:
        scores = {lab: float(r[lab]) for lab in labels}
        if task == "single-label":
            assert r["predicted"] == max(scores, key=scores.get)
        else:
            assert r["predicted"] == ";".join(lab for lab in labels if scores[lab] >= 0.5)
        assert r["correct"] == str(int(r["true"] == r["predicted"]))
    wrong = _csv_rows(out / "misclassified.csv")
    assert [w["id"] for w in wrong] == [r["id"] for r in rows if r["correct"] == "0"]
    assert f"misclassified: {len(wrong)} of {len(rows)} clips" in printed
    if task == "single-label":
        matrix = (out / "confusion_matrix.txt").read_text().splitlines()
        assert matrix[0].split()[:3] == ["true", "\\", "predicted"] and len(matrix) == 1 + len(labels)
        assert sum(int(v) for line in matrix[1:] for v in line.split()[2:]) == len(rows)
        assert "\n".join(matrix) in printed
        if wrong:
            first = wrong[0]
            assert f"{first['true']} -> {first['predicted']}" in printed.split("most confused")[1]
    else:
        assert not (out / "confusion_matrix.txt").exists()


def test_best_and_worst_tags_never_repeat_a_tag():
    from audiocnn.cli.evaluate import best_and_worst

    def tags(*aucs):
        return [{"label": f"t{i}", "roc_auc": a} for i, a in enumerate(aucs)]

    assert best_and_worst(tags(1.0, 1.0, 1.0, 1.0)) == ["every tag: ROC-AUC 1.000 (4 tags)"]
    best, worst = best_and_worst(tags(0.9, 0.8, 0.7, 0.6, 0.5, 0.4))
    assert best == "best tags: t0 0.900, t1 0.800, t2 0.700" and worst == "worst tags: t5 0.400, t4 0.500, t3 0.600"
    best, worst = best_and_worst(tags(1.0, 1.0, 1.0, 1.0, 0.5))
    assert best == "best tags: t0 1.000, t1 1.000 (and 2 more at 1.000)" and worst == "worst tags: t4 0.500"
    assert best_and_worst(tags(0.7, 0.6)) == ["best tags: t0 0.700", "worst tags: t1 0.600"]
