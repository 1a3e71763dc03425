"""What a new user meets in the first hour, and every day after (issue 21): where data and
caches live, labels beside the audio, evaluate's outputs a user can act on, the small
things (wording, help, timing) of the CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from audiocnn.cli.main import run
from audiocnn.testing.audio import synth_tone, write_audio

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
        from audiocnn.testing.models import make_checkpoint

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
    from audiocnn.testing.commands import run_cli

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
    from audiocnn.datasets.manifest import read_manifest
    from audiocnn.testing.models import make_checkpoint
    from audiocnn.testing.training import MULTI_LABELS, SINGLE_LABELS, make_dataset

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


# --------------------------------------------------------------------------- 6. the small things


def test_pretrained_list_says_a_model_imports_itself(cache_dir, capsys):
    assert run(["pretrained", "list"]) == 0
    err = capsys.readouterr().err
    assert "import them with" not in err
    if NO_MUSICNN:
        assert "pip install --no-deps musicnn==0.1.0" in err
    else:
        assert f"imports itself into {cache_dir / 'pretrained'} the first time it is used" in err


def _help(capsys, *command: str) -> str:
    assert run([*command, "--help"]) == 0
    return capsys.readouterr().out


def test_help_shows_plain_placeholders_and_whole_summaries(capsys, monkeypatch):
    from audiocnn.cli.app import app, plain_help

    monkeypatch.setenv("COLUMNS", "80")
    top = _help(capsys)
    listed = top.split("Commands:")[1]
    assert "..." not in listed and "…" not in listed  # no summary cut short
    assert "the metadata) and check it against torch" in " ".join(listed.split())
    group = plain_help(__import__("typer").main.get_command(app))
    commands = [[name] for name in group.commands if name != "pretrained"] + [["pretrained", "list"]]
    for command in [*commands, ["pretrained", "import"]]:
        text = _help(capsys, *command)
        for python_type in ("<list[", "<str>", "<int>", "<float>", "<path>", "{paths}", "{"):
            assert python_type not in text, (command, python_type)
    tag = _help(capsys, "tag")
    assert "Usage: audiocnn tag [OPTIONS] [PATH...]" in tag and "-m, --model MODEL" in tag
    assert "a run folder of `audiocnn train`" in " ".join(tag.split())


def test_a_one_window_file_says_window(tmp_path, capsys):
    from audiocnn.testing.models import SR, make_checkpoint

    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-wave")
    song = write_audio(tmp_path / "one.wav", synth_tone(0.9, SR), SR)
    assert run(["tag", str(song), "-m", str(ckpt), "--device", "cpu", "-j", "2"]) == 0
    cap = capsys.readouterr()
    assert "1 window of" in cap.out and "1 window," in cap.err and "1 windows" not in cap.out + cap.err


def test_the_cpu_is_named_only_at_verbose(caplog):
    import logging

    import torch

    from audiocnn.devices import resolve_device

    if torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        pytest.skip("an accelerator is present: auto picks it and says so")
    with caplog.at_level(logging.INFO, logger="audiocnn"):
        assert resolve_device("auto").type == "cpu"
    assert "device: cpu" not in caplog.text
    with caplog.at_level(logging.DEBUG, logger="audiocnn"):
        resolve_device("auto")
    assert "device: cpu (no cuda or mps device found)" in caplog.text


def test_datasets_fits_80_columns_when_piped(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert run(["--data-dir", str(tmp_path), "datasets"]) == 0
    out = capsys.readouterr().out
    assert "mtg-jamendo-instrument" in out and "508 GB (low: 156)" in out and "Tzanetakis" in out
    title, *lines = out.splitlines()  # the title names the data folder, as long as its path
    assert title == f"datasets (data dir: {tmp_path})"
    assert max(len(line.rstrip()) for line in lines) <= 80 and "…" not in out


def test_models_lists_the_zoo_without_torch_and_the_table_is_the_registry(tmp_path):
    import json
    import subprocess
    import sys

    from audiocnn.models.registry import builtin_models, describe_models
    from audiocnn.zoo import zoo_rows

    for outputs in (50, 7):
        built = [r for r in describe_models(outputs) if r["name"] in builtin_models()]
        assert json.loads(json.dumps(zoo_rows(outputs))) == json.loads(json.dumps(built)), (
            "audiocnn/models/zoo.json is stale: run "
            '`.venv/bin/python -c "from audiocnn.models.registry import write_zoo_table; write_zoo_table()"`'
        )
    code = (
        "import sys; from audiocnn.cli.main import run; assert run(['models']) == 0; "
        "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("no torch") and "shortchunk-resnet" in done.stdout


def test_a_library_run_with_every_file_done_does_not_load_the_model(tmp_path, capsys, monkeypatch):
    import audiocnn.tagging.command as command
    from audiocnn.testing.models import SR, make_checkpoint

    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel")
    music = tmp_path / "music"
    for i in range(3):
        write_audio(music / f"s{i}.wav", synth_tone(1.5, SR, seed=i), SR)
    results = tmp_path / "tags.jsonl"
    args = ["tag", str(music), "-m", str(ckpt), "--output", str(results), "--device", "cpu"]
    assert run(args) == 0
    capsys.readouterr()

    def no_model(*a, **kw):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(command, "Tagger", no_model)
    assert run(args) == 0
    err = capsys.readouterr().err
    assert "skipping 3 files already in" in err and "loaded" not in err
    write_audio(music / "s3.wav", synth_tone(1.5, SR, seed=3), SR)  # a new file: now the model loads
    monkeypatch.undo()
    assert run(args) == 0
    assert "1 file to tag" in capsys.readouterr().err


def test_curves_show_accuracy_and_balanced_accuracy_and_the_best_epoch(tmp_path, monkeypatch):
    from audiocnn.training import plots

    csv_path = tmp_path / "metrics.csv"
    rows = ["epoch,train_loss,valid_loss,roc_auc_macro,pr_auc_macro,accuracy,balanced_accuracy,lr"]
    rows += [f"{e},{1 / e},{1.2 / e},0.9,0.8,{0.5 + e / 20},{0.5 + e / 20},0.01" for e in range(1, 6)]
    csv_path.write_text("\n".join(rows) + "\n")
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: figures.append(fig) or Path(out))
    plots.plot_training_curves(csv_path, tmp_path / "curves.png", best_epoch=3)
    (fig,) = figures
    validation = fig.axes[1]
    lines = {line.get_label(): line for line in validation.get_lines()}
    acc, bal = lines["accuracy"], lines["balanced_accuracy"]
    assert list(acc.get_ydata()) == list(bal.get_ydata())  # equal on a balanced split, yet both visible:
    assert (acc.get_linestyle(), acc.get_marker()) != (bal.get_linestyle(), bal.get_marker())
    for ax in fig.axes:
        marks = [line for line in ax.get_lines() if line.get_label() == "best (epoch 3)"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [3, 3]


def test_info_counts_each_label_in_each_split(tmp_path, capsys):
    from audiocnn.testing.training import make_dataset

    data = tmp_path / "data"
    data.mkdir()
    make_dataset(data, "tones", "single-label", n_train=6, n_valid=3, n_test=3)
    assert run(["--data-dir", str(data), "info", "tones"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.split("clips per label")[1].splitlines()[1:]}
    assert rows == {"high": ["2", "1", "1"], "low": ["2", "1", "1"], "mid": ["2", "1", "1"]}
    assert run(["--data-dir", str(data), "info", "tones", "--format", "json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["label_counts"]["low"] == {"train": 2, "valid": 1, "test": 1}


# --------------------------------------------------------------------------- 7. the install


def test_readme_offers_the_torch_choice_before_the_first_command():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    before = readme.split("```")[0]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in before
    assert "6.2 GB" in before and "1.7 GB" in before  # what each choice costs on disk
