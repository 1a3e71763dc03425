"""Fixture files in the real layouts of the two large tag datasets, MTG-Jamendo and the
Million Song Dataset (Choi's and Won's splits): tiny synthetic clips, real file formats."""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import replace

import numpy as np

from audiocnn.datasets import msd, mtg_jamendo
from audiocnn.testing.archives import digest, tar_gz
from audiocnn.testing.audio import audio_bytes
from audiocnn.testing.datasets import Fixture

# ----------------------------------------------------------------------------- MTG-Jamendo

MTG_COLUMNS = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n"
MTG_TAGS = (
    "genre---rock",
    "genre---jazz",
    "instrument---piano",
    "instrument---guitar",
    "mood/theme---happy",
    "mood/theme---sad",
)
MTG_SUBSETS = {  # subset file stem -> tag prefix kept (None: every tag)
    "autotagging": None,
    "autotagging_top50tags": None,
    "autotagging_genre": "genre---",
    "autotagging_instrument": "instrument---",
    "autotagging_moodtheme": "mood/theme---",
}


def mtg_fixture(n_tars: int = 6, per_tar: int = 10, variants: tuple[str, ...] = ("audio",)) -> Fixture:
    """The repository's data/ tree (split-0 and split-1 TSVs of three subsets, the sha256
    lists) and raw_30s/<variant>/raw_30s_<variant>-NN.tar, each holding folder NN/ with
    tracks NN/<id>.mp3 (audio-low: NN/<id>.low.mp3) -- the real names and layout.

    Per tar: 60% train, 20% validation, 20% test (split-0); split-1 swaps valid and test.
    ``expected["tracks"]``: track id -> (PATH, tags, split-0 split).
    """
    encoded = [audio_bytes("mp3", sr=16000, seconds=0.5, seed=k) for k in range(3)]
    files: dict[str, bytes] = {}
    tracks: dict[str, tuple[str, list[str], str]] = {}
    rows: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    per_split_name = {"train": "train", "valid": "validation", "test": "test"}
    for nn in range(n_tars):
        for k in range(per_tar):
            num = 1000 * (k + 1) + nn
            tid, path = f"track_{num:07d}", f"{nn:02d}/{num}.mp3"
            split0 = "train" if k % 5 < 3 else "valid" if k % 5 == 3 else "test"
            split1 = {"valid": "test", "test": "valid"}.get(split0, split0)
            tags = [MTG_TAGS[k % 2]]  # a genre always; an instrument and a mood/theme on most tracks
            tags += [MTG_TAGS[2 + (k + nn) % 2]] if k % 4 != 1 else []
            tags += [MTG_TAGS[4 + (k // 2 + nn) % 2]] if k % 4 != 2 else []
            tracks[tid] = (path, tags, split0)
            for scheme, split in (("split-0", split0), ("split-1", split1)):
                for subset, prefix in MTG_SUBSETS.items():
                    kept = [t for t in tags if prefix is None or t.startswith(prefix)]
                    if kept:
                        line = "\t".join([tid, f"artist_{nn:06d}", f"album_{k:06d}", path, "30.0", *kept])
                        rows[(scheme, subset, per_split_name[split])].append(line)
    for (scheme, subset, split), lines in rows.items():
        files[f"data/splits/{scheme}/{subset}-{split}.tsv"] = (MTG_COLUMNS + "\n".join(lines) + "\n").encode()
    for variant in variants:
        tar_lines, track_lines = [], []
        for nn in range(n_tars):
            members = {}
            for tid, (path, _tags, _s) in tracks.items():
                if path.startswith(f"{nn:02d}/"):
                    name = path[:-4] + ".low.mp3" if variant == "audio-low" else path
                    members[name] = encoded[int(tid[-4:]) % 3] + tid.encode()  # distinct bytes per track
                    track_lines.append(f"{digest(members[name], 'sha256')} {name}")
            name = f"raw_30s_{variant}-{nn:02d}.tar"
            files[f"raw_30s/{variant}/{name}"] = data = tar_gz(members, mode="w", dirs=(f"{nn:02d}",))
            tar_lines.append(f"{digest(data, 'sha256')} {name}")
        files[f"data/download/raw_30s_{variant}_sha256_tars.txt"] = ("\n".join(tar_lines) + "\n").encode()
        files[f"data/download/raw_30s_{variant}_sha256_tracks.txt"] = ("\n".join(track_lines) + "\n").encode()
    return Fixture(files, {"tracks": tracks, "per_tar": per_tar, "n_tars": n_tars})


def patch_mtg_pins(monkeypatch, files: dict[str, bytes]) -> None:
    """Pin the fixture's metadata files (data/...) as the real ones are pinned."""
    pins = {rel: {"sha256": digest(data, "sha256")} for rel, data in files.items() if rel.startswith("data/")}
    monkeypatch.setitem(mtg_jamendo.PINNED, "files", pins)


# ----------------------------------------------------------------------------- MSD


def msd_ids(n: int, seed: int = 0) -> list[str]:
    """``n`` track ids of the MSD's form (TR + 16 upper-case letters and digits)."""
    rng = np.random.default_rng(seed)
    chars = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    return sorted({"TR" + "".join(rng.choice(chars, 16)) for _ in range(n)})


def pickle_protocol0_strings(items: list[str]) -> bytes:
    """A list of str pickled as Python 2's cPickle wrote Won et al.'s lists: ``(lp1 S'..' p2 a ... .``."""
    out = ["(lp1\n"]
    for k, item in enumerate(items, 2):
        out.append(f"S'{item}'\np{k}\na")
    return ("".join(out) + ".").encode("ascii")


def msd_fixture(n_train: int = 20, n_valid: int = 6, n_test: int = 6) -> Fixture:
    """Choi's split (id lists + boolean y arrays, real names and .npy form) and Won's two
    pickled lists (train+valid minus the two shortest, test minus one), for ids of the MSD form."""
    ids = msd_ids(n_train + n_valid + n_test)
    parts = {"train": ids[:n_train], "valid": ids[n_train : n_train + n_valid], "test": ids[n_train + n_valid :]}
    files: dict[str, bytes] = {}
    labels: dict[str, list[int]] = {}
    for split, members in parts.items():
        y = np.zeros((len(members), 50), dtype=bool)
        for i, msd_id in enumerate(members):
            on = [ids.index(msd_id) % 50, (ids.index(msd_id) * 7 + 3) % 50]
            y[i, on] = True
            labels[msd_id] = sorted(on)
        buf = io.BytesIO()
        np.save(buf, y)
        files[f"{split}_y.npy"] = buf.getvalue()
        files[f"{split}_x_msd_id.txt"] = ("\n".join(members) + "\n").encode()
    won_train = parts["train"][2:] + parts["valid"]  # as if two were shorter than 29.1 s
    won_test = parts["test"][1:]
    files["filtered_list_train.cP"] = pickle_protocol0_strings(won_train)
    files["filtered_list_test.cP"] = pickle_protocol0_strings(won_test)
    return Fixture(files, {"parts": parts, "labels": labels, "won_train": won_train, "won_test": won_test})


def patch_msd(monkeypatch, files: dict[str, bytes], won_train: int) -> None:
    """Pin the fixture's digests and Won's train/valid cut (201,680 in the real list)."""
    for table in (msd.CHOI_REMOTES, msd.WON_REMOTES):
        for name, r in list(table.items()):
            monkeypatch.setitem(table, name, replace(r, checksum=digest(files[name], "sha256"), algorithm="sha256"))
    spec = msd.MillionSongDataset
    monkeypatch.setattr(spec, "remotes", tuple(msd.CHOI_REMOTES.values()) + tuple(msd.WON_REMOTES.values()))
    monkeypatch.setattr(msd, "WON_TRAIN", won_train)
    monkeypatch.setattr(msd, "WON_SIZES", {"filtered_list_train.cP": None, "filtered_list_test.cP": None})
