"""prepare msd --source DIR: the user's previews (named by MSD track id, any layout) with
the literature's top-50 split (Won et al. 2020 lists, read from their pickles without
unpickling; Choi et al. 2017 lists and label arrays), metadata served on 127.0.0.1."""

from __future__ import annotations

import json
import pickle

import pytest

from audiocnn.cli.main import run
from audiocnn.datasets import prepare_dataset, verify_dataset
from audiocnn.datasets.msd import read_pickled_strings
from audiocnn.datasets.registry import read_resource_lines
from audiocnn.errors import DatasetError
from audiocnn.testing.audio import audio_bytes
from audiocnn.testing.datasets import no_slow_retries
from audiocnn.testing.tag_datasets import msd_fixture, patch_msd, pickle_protocol0_strings


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    no_slow_retries(monkeypatch)


def _previews(root, ids):
    """Some of the split's previews in a nested layout, one named .clip.mp3, plus strays."""
    clip = audio_bytes("mp3", sr=22050, seconds=0.5)
    for k, msd_id in enumerate(ids):
        name = f"{msd_id}.clip.mp3" if k == 0 else f"{msd_id}.mp3"
        p = root / msd_id[2] / msd_id[3] / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(clip)
    (root / "8947470.clip.mp3").write_bytes(clip)  # a 7digital name: not an MSD id, skipped
    (root / "notes.txt").write_text("x")
    return root


def test_msd_won2020_split_from_the_users_previews(http_server, data_dir, monkeypatch, capsys, tmp_path):
    fx = msd_fixture()
    parts = fx.expected["parts"]
    patch_msd(monkeypatch, fx.files, won_train=15)
    monkeypatch.setenv("AUDIOCNN_MIRROR", http_server.add_files("/msd", fx.files))
    have = parts["train"][:6] + parts["valid"][:3] + parts["test"][:3]
    src = _previews(tmp_path / "previews", have)

    code = run(["--data-dir", str(data_dir), "prepare", "msd", "--source", str(src), "-j", "1"])
    assert code == 0
    capsys.readouterr()
    assert run(["--data-dir", str(data_dir), "info", "msd", "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    tags = read_resource_lines("msd", "top50_tags.txt")
    assert info["labels"] == tags and info["task"] == "multi-label"
    won = fx.expected["won_train"]
    want = {}
    for msd_id in have:
        if msd_id in won[:15]:
            want[msd_id] = "train"
        elif msd_id in won[15:]:
            want[msd_id] = "valid"
        elif msd_id in fx.expected["won_test"]:
            want[msd_id] = "test"
    from audiocnn.datasets import read_manifest

    m = read_manifest(data_dir / "msd")
    assert {c.id: c.split for c in m.clips} == want
    assert all(c.labels == [tags[i] for i in fx.expected["labels"][c.id]] for c in m.clips)
    reasons = {e["id"]: e["reason"] for e in m.excluded}
    dropped = set(have) - set(want)  # Won's lists dropped them (shorter than 29.1 s)
    assert dropped and all("not in the won2020 split" in reasons[i] for i in dropped)
    assert m.extra["present"] == {s: n for s, n in info["splits"].items() if n}
    assert m.extra["not_msd_named"] == 1
    assert verify_dataset(data_dir, "msd").ok

    # Choi et al. 2017: their own three lists
    m2 = prepare_dataset("msd", data_dir, source=str(src), split_scheme="choi2017", jobs=1, progress=False)
    assert {c.id: c.split for c in m2.clips} == {i: s for s, members in parts.items() for i in members if i in have}


def test_msd_without_source_is_one_line(data_dir, capsys):
    code = run(["--data-dir", str(data_dir), "prepare", "msd"])
    err = capsys.readouterr().err
    assert code != 0 and "--source DIR" in err and len(err.strip().splitlines()) <= 2


def test_pickled_lists_are_read_without_unpickling(tmp_path):
    ids = ["TRAADIN128F931D672", "TRAADQW128F427CE68"]
    p0 = tmp_path / "p0.cP"
    p0.write_bytes(pickle_protocol0_strings(ids))
    assert read_pickled_strings(p0) == ids
    for protocol in (2, 4, 5):
        p = tmp_path / f"p{protocol}.cP"
        p.write_bytes(pickle.dumps(ids + ids[:1], protocol=protocol))  # a repeated string is a memo GET
        assert read_pickled_strings(p) == ids + ids[:1]

    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    evil = tmp_path / "evil.cP"
    evil.write_bytes(pickle.dumps([ids[0], Boom()], protocol=0))
    with pytest.raises(DatasetError, match="refusing to read it"):
        read_pickled_strings(evil)
    assert not (tmp_path / "pwned").exists()
    nested = tmp_path / "nested.cP"
    nested.write_bytes(pickle.dumps([ids, "x"], protocol=2))
    with pytest.raises(DatasetError, match="list of strings"):
        read_pickled_strings(nested)


@pytest.mark.parametrize(
    "data",
    [
        b"a.",  # APPEND with nothing on the stack
        b"]h\x05.",  # GET of a memo key never PUT
        b"]X\x01\x00\x00\x00ae.",  # APPENDS without a MARK
        b"q\x00.",  # PUT with nothing on the stack
        b"l.",  # LIST without a MARK
    ],
)
def test_a_malformed_pickled_list_is_one_dataset_error(tmp_path, data):
    p = tmp_path / "bad.cP"
    p.write_bytes(data)
    with pytest.raises(DatasetError, match=r"bad\.cP: .*(malformed pickle|appending to something)") as err:
        read_pickled_strings(p)
    assert "nothing in it was run" in str(err.value) or "appending" in str(err.value)
