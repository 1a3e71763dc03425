"""`tag`'s bad inputs are one line (no traceback): unwritable output folders are refused
before the model loads; the summary and table survive odd file names."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from audiocnn.cli.main import run
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.testing.commands import last_line
from audiocnn.testing.faults import deny_write
from audiocnn.testing.models import SR, make_checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "test-probe-mel")


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("songs")
    return write_audio(d / "a.wav", synth_tone(2.0, SR, seed=1), SR)


def _tag(capsys, *args: str) -> tuple[int, str, str]:
    code = run(["tag", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# -- 5. output folders ---------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--taggram", "--embeddings"])
def test_tag_read_only_output_folder_fails_before_the_model_loads(capsys, song, tmp_path, monkeypatch, option):
    out = tmp_path / "out"
    out.mkdir()
    deny_write(monkeypatch, out)
    # the model does not exist: an error about it would mean it was loaded first
    code, stdout, err = _tag(capsys, str(song), "--model", str(tmp_path / "none.safetensors"), option, str(out))
    line = last_line(err)
    assert code == 2 and stdout == ""
    assert line == f"error: {option} {out}: the folder is not writable"


def test_tag_output_folder_under_a_file(capsys, song, ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _tag(capsys, str(song), "--model", str(ckpt), "--embeddings", str(blocker / "sub"))
    line = last_line(err)
    assert code == 2 and line.startswith(f"error: --embeddings {blocker / 'sub'}: cannot create the folder (")


# -- 6. tag's summary and table -----------------------------------------------------------------


def test_summary_counts_missing_files(capsys, ckpt, song, tmp_path):
    code, out, err = _tag(capsys, str(tmp_path / "gone.wav"), str(song), "--model", str(ckpt))
    assert code == 1
    assert re.fullmatch(r"tagged 1 of 2 files in [\d.]+ s; 1 failed", err.strip().splitlines()[-1]), err


def test_control_characters_in_file_names_are_escaped(capsys, ckpt, tmp_path):
    odd = write_audio(tmp_path / "we\nird\x1b[2J.wav", synth_tone(2.0, SR, seed=2), SR)
    bad = tmp_path / "bro\nken.wav"
    bad.write_bytes(b"RIFF" + os.urandom(40))
    code, out, err = _tag(capsys, str(odd), str(bad), "--model", str(ckpt), "--top-k", "2")
    assert code == 1
    escaped = str(tmp_path / "we\\nird\\x1b[2J.wav")
    lines = out.splitlines()
    assert lines[0].startswith(f"{escaped}  [") and "\x1b" not in out
    assert len(lines) == 1 + 1 + 2 + 1 + 1  # head, column names, two tags, predicted, blank separator
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "bro\\nken.wav") in errors[0]
    assert f"[1/2] {escaped}:" in err
    assert re.fullmatch(r"tagged 1 of 2 files in [\d.]+ s; 1 failed", err.strip().splitlines()[-1]), err
