"""A validation or test split too small to trust is named, with its counts per class and
what to do, by prepare (and train, see test_train)."""

from __future__ import annotations

from types import SimpleNamespace

from audiocnn.splits import small_split_notes
from audiocnn.testing.training import prepare_folder, write_audio_folder

WAY_OUT = "use a larger split (--split-scheme) or cross-validation"


def test_prepare_says_which_split_is_too_small(tmp_path, capsys):
    src, labels_csv, _rows = write_audio_folder(tmp_path / "audio", "single-label", n_valid=4, n_test=3)
    assert prepare_folder(tmp_path / "data", src, labels_csv, "few", "single-label") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert lines == [
        "warning: few: the valid split has 4 clips, 1 to 2 per class (low 1, mid 1, high 2): too few to trust its "
        "scores or to choose the best epoch by them (fewer than 5 clips of a class: one clip moves its recall by "
        f"more than 20 points); {WAY_OUT}",
        "warning: few: the test split has 3 clips, 1 per class (high 1, low 1, mid 1): too few to trust its "
        "scores or to choose the best epoch by them (fewer than 5 clips of a class: one clip moves its recall by "
        f"more than 20 points); {WAY_OUT}",
    ]


def clips(split: str, *labels: list[str]) -> list[SimpleNamespace]:
    return [SimpleNamespace(split=split, labels=lab) for lab in labels]


def test_five_clips_per_class_are_enough_and_every_label_counts():
    enough = clips("valid", *[["a"], ["b"]] * 5) + clips("train", ["a"])
    assert small_split_notes(enough, ["a", "b"]) == []  # no test split: nothing to say about it
    multi = clips("test", *[["a", "b"]] * 5, ["c"])  # multi-label: c is in one clip
    (note,) = small_split_notes(multi, ["a", "b", "c", "d"])
    assert note.startswith("the test split has 6 clips, 0 to 5 per class (d 0, c 1, a 5, b 5): too few")
    many = clips("valid", *[[f"l{i}"] for i in range(8)])
    (note,) = small_split_notes(many, [f"l{i}" for i in range(8)])
    assert "(l0 1, l1 1, l2 1, l3 1, l4 1, l5 1, ... (2 more))" in note
