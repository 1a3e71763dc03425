"""`prepare folder` on awkward input: links out of the source, labels CSVs in odd
encodings, splits too thin to train on, and a --name reused for another folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiocnn.testing.audio import audio_bytes
from audiocnn.testing.commands import one_error_line, run_cli
from audiocnn.testing.datasets import make_folder

pytestmark = pytest.mark.usefixtures("fast_retries")


def _prepare_folder(capsys, data: Path, src: Path, *extra: str) -> tuple[int, str, str]:
    """``audiocnn --data-dir DATA prepare folder --source SRC --name m -j 1 EXTRA...``."""
    return run_cli(
        capsys, "--data-dir", str(data), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1", *extra
    )


# ----------------------------------------------------------------------------- folder links


@pytest.mark.parametrize("mode", ["subfolders", "csv"])
def test_folder_link_out_of_the_source_is_refused_in_both_modes(tmp_path, capsys, mode):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    outside = tmp_path / "private" / "secret.wav"
    outside.parent.mkdir()
    outside.write_bytes(audio_bytes("wav", seconds=0.3))
    (src / "calm" / "linked.wav").symlink_to(outside)
    stash = src / ".stash" / "kept.wav"  # hidden: not a clip of its own in either mode
    stash.parent.mkdir()
    stash.write_bytes(audio_bytes("wav", seconds=0.3))
    (src / "loud" / "inner.wav").symlink_to(stash)  # a link that stays inside: fine
    args = ["--data-dir", str(tmp_path / "data"), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1"]
    if mode == "csv":
        rows = ["path,labels"] + [
            f"{p.relative_to(src).as_posix()},{p.parent.name}"
            for p in sorted(src.glob("*/*.wav"))
            if p.parent != stash.parent
        ]
        (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
        args += ["--labels", str(tmp_path / "labels.csv")]
    code, _out, err = run_cli(capsys, *args)
    line = one_error_line(err)
    assert code == 1 and "calm/linked.wav is outside the source folder" in line and str(outside) in line

    (src / "calm" / "linked.wav").unlink()
    if mode == "csv":
        lines = (tmp_path / "labels.csv").read_text().splitlines()
        (tmp_path / "labels.csv").write_text("\n".join(x for x in lines if "linked" not in x) + "\n")
    code, _out, err = run_cli(capsys, *args)
    assert code == 0, err


def _labels_csv(src: Path, path: Path, encoding: str, bom: bytes = b"") -> Path:
    rows = ["path,labels"] + [
        f"{p.relative_to(src).as_posix()},{p.parent.name};café" for p in sorted(src.rglob("*.wav"))
    ]
    path.write_bytes(bom + ("\n".join(rows) + "\n").encode(encoding))
    return path


def test_labels_csv_in_latin1_names_line_and_byte(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    csv_path = _labels_csv(src, tmp_path / "labels.csv", "latin-1")
    first_bad = csv_path.read_bytes().index(b"\xe9")
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src, "--labels", str(csv_path))
    line = one_error_line(err)
    assert code == 1
    assert f"{csv_path}:2: not UTF-8 (byte 0xe9 at byte offset {first_bad}); save the file as UTF-8" in line


@pytest.mark.parametrize(
    "encoding,bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff")]
)
def test_labels_csv_utf8_bom_and_utf16_with_bom_are_read(tmp_path, capsys, encoding, bom):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    csv_path = _labels_csv(src, tmp_path / "labels.csv", encoding, bom)
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src, "--labels", str(csv_path), "--format", "json")
    assert code == 0, err
    from audiocnn.datasets import read_manifest

    assert read_manifest(tmp_path / "data" / "m").labels == ["café", "calm", "loud"]


def test_labels_csv_utf16_without_bom_is_refused(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    csv_path = _labels_csv(src, tmp_path / "labels.csv", "utf-16-le")
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src, "--labels", str(csv_path))
    assert code == 1 and "save the file as UTF-8" in one_error_line(err)


# ----------------------------------------------------------------------------- thin splits
def test_one_clip_per_label_warns_that_valid_and_test_are_empty(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 1, "loud": 1, "spoken": 1})
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src)
    assert code == 0, err
    assert (
        "WARNING: m: the valid and test splits are empty (train 3, valid 0, test 0): training cannot "
        "choose its best epoch and evaluation has nothing to score (ROC-AUC undefined)"
    ) in err


def test_a_single_label_warns_that_nothing_can_be_learned(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 4})
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src)
    assert code == 0, err
    assert "WARNING: m: every clip has the one label 'calm': a model learns nothing and ROC-AUC is undefined" in err


def test_a_label_missing_from_a_split_warns_about_its_auc(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 4, "loud": 2})
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src)
    assert code == 0, err
    assert "WARNING: m: ROC-AUC is undefined on the valid split for 2 of 2 labels" in err


def test_enough_clips_give_no_split_warning(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    code, _out, err = _prepare_folder(capsys, tmp_path / "data", src)
    assert code == 0 and "WARNING" not in err, err


# ----------------------------------------------------------------------------- --name reused
def test_same_name_from_another_source_needs_force(tmp_path, capsys):
    a = make_folder(tmp_path / "a", {"calm": 3, "loud": 3})
    b = make_folder(tmp_path / "b", {"x": 3, "y": 3})
    base = ["--data-dir", str(tmp_path / "data"), "prepare", "folder", "--name", "m", "-j", "1"]
    assert run_cli(capsys, *base, "--source", str(a))[0] == 0
    code, _out, err = run_cli(capsys, *base, "--source", str(b))
    line = one_error_line(err)
    assert code == 2 and str(a.resolve()) in line and str(b.resolve()) in line and "--force" in line
    from audiocnn.datasets import read_manifest

    assert read_manifest(tmp_path / "data" / "m").labels == ["calm", "loud"]  # untouched
    code, _out, err = run_cli(capsys, *base, "--source", str(a))
    assert code == 0 and "nothing to do (use --force to prepare it again)" in err  # a log line in flags
    assert run_cli(capsys, *base, "--source", str(b), "--force")[0] == 0
    assert read_manifest(tmp_path / "data" / "m").labels == ["x", "y"]
