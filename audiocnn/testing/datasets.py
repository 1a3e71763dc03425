"""Fixture archives in each dataset's real layout (GTZAN, MagnaTagATune, FMA, a folder).

The archives hold tiny synthetic clips (about one second each) so that the whole
prepare -> info -> verify path runs in seconds.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from audiocnn.datasets import get_dataset
from audiocnn.datasets.gtzan import fault_filtered_split
from audiocnn.datasets.registry import read_resource_lines
from audiocnn.testing.archives import digest, split_bytes, tar_gz, zip_bytes
from audiocnn.testing.audio import audio_bytes


def no_slow_retries(monkeypatch, retries: int = 1) -> None:
    """Downloads in tests: no back-off between tries, ``retries`` retries, no mirror taken
    from the environment."""
    monkeypatch.setenv("AUDIOCNN_DOWNLOAD_BACKOFF", "0")
    monkeypatch.setenv("AUDIOCNN_DOWNLOAD_RETRIES", str(retries))
    monkeypatch.delenv("AUDIOCNN_MIRROR", raising=False)


def patch_remotes(monkeypatch, dataset: str, files: dict[str, bytes], urls: dict[str, str] | None = None) -> None:
    """Give a registered dataset the fixture's digests (same algorithm, same file names)."""
    spec = get_dataset(dataset)
    new = []
    for r in spec.remotes:
        if r.filename in files:
            r = replace(r, checksum=digest(files[r.filename], r.algorithm), size=None)
        if urls and r.filename in urls:
            r = replace(r, url=urls[r.filename])
        new.append(r)
    monkeypatch.setattr(type(spec), "remotes", tuple(new))


# ----------------------------------------------------------------------------- GTZAN

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


def gtzan_pick() -> dict[str, str]:
    """Per genre: the first clip of each fault-filtered split, plus one clip in no list.

    Returns clip id -> expected split ("excluded" for the unlisted ones).
    """
    listed = fault_filtered_split()
    chosen: dict[str, str] = {}
    for g in GENRES:
        ids = [f"{g}.{n:05d}" for n in range(100)]
        for split in ("train", "valid", "test"):
            first = next(i for i in ids if listed.get(i) == split)
            chosen[first] = split
        unlisted = [i for i in ids if i not in listed]
        if unlisted:
            chosen[unlisted[0]] = "excluded"
    chosen["jazz.00054"] = listed["jazz.00054"]
    return chosen


@dataclass
class Fixture:
    files: dict[str, bytes]  # remote filename -> bytes
    expected: dict = field(default_factory=dict)


def gtzan_fixture(variant: str = "au") -> Fixture:
    """``genres.tar.gz`` (au) or the Kaggle-style zip (``Data/genres_original/*.wav``,
    with a corrupt jazz.00054.wav)."""
    chosen = gtzan_pick()
    members: dict[str, bytes] = {}
    for k, cid in enumerate(sorted(chosen)):
        genre = cid.split(".")[0]
        if variant == "au":
            members[f"genres/{genre}/{cid}.au"] = audio_bytes("au", seed=k % 7)
        else:
            data = audio_bytes("wav", seed=k % 7)
            if cid == "jazz.00054":
                data = b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(200)  # as broken as the real one
            members[f"Data/genres_original/{genre}/{cid}.wav"] = data
    if variant == "au":
        return Fixture({"genres.tar.gz": tar_gz(members)}, {"chosen": chosen})
    return Fixture({"gtzan-kaggle.zip": zip_bytes(members)}, {"chosen": chosen})


# ----------------------------------------------------------------------------- MTAT

MTAT_BROKEN = {"35644": "6", "55753": "8", "57881": "9"}


def mtat_fixture() -> Fixture:
    """mp3.zip.001-003 (one zip cut in three), annotations_final.csv with the real
    188-column header, clip_info_final.csv. One or two clips per folder 0-f."""
    tags = read_resource_lines("mtat", "annotation_tags.txt")
    top50 = read_resource_lines("mtat", "top50_tags.txt")
    rows = []
    members: dict[str, bytes] = {}
    clip_id = 2
    expected = {"standard": {"train": 0, "valid": 0, "test": 0}, "all-clips": {"train": 0, "valid": 0, "test": 0}}
    labels_of: dict[str, list[str]] = {}
    for k, folder in enumerate("0123456789abcdef"):
        for j in range(2 if folder in "cd" else 1):
            cid = str(clip_id)
            clip_id += 7
            path = f"{folder}/artist_{k}-album-{j:02d}-song_{cid}-30-59.mp3"
            members[path] = audio_bytes("mp3", sr=16000, seed=k)
            # every third clip has only tags outside the top 50 (dropped by "standard")
            if (k + j) % 3 == 2:
                on = {"duet", "plucking"}
            else:
                on = {top50[k % 50], top50[(k + 7) % 50], "singer"}
            labels_of[cid] = [t for t in top50 if t in on]
            rows.append((cid, on, path))
            split = "train" if folder in "0123456789ab" else "valid" if folder == "c" else "test"
            expected["all-clips"][split] += 1
            if labels_of[cid]:
                expected["standard"][split] += 1
    for cid, folder in MTAT_BROKEN.items():
        path = f"{folder}/broken_{cid}-00-x-0-29.mp3"
        members[path] = b""  # the real three are empty or corrupt
        rows.append((cid, {top50[0]}, path))
    zdata = zip_bytes(members)
    parts = split_bytes(zdata, 3)
    ann = io.StringIO()
    w = csv.writer(ann, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
    w.writerow(["clip_id", *tags, "mp3_path"])
    for cid, on, path in rows:
        w.writerow([cid, *("1" if t in on else "0" for t in tags), path])
    info = io.StringIO()
    w = csv.writer(info, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
    w.writerow(
        [
            "clip_id",
            "track_number",
            "title",
            "artist",
            "album",
            "url",
            "segmentStart",
            "segmentEnd",
            "original_url",
            "mp3_path",
        ]
    )
    for cid, _on, path in rows:
        w.writerow([cid, "1", "song", "artist", "album", "http://magnatune.com/", "30", "59", "", path])
    files = {
        "mp3.zip.001": parts[0],
        "mp3.zip.002": parts[1],
        "mp3.zip.003": parts[2],
        "annotations_final.csv": ann.getvalue().encode(),
        "clip_info_final.csv": info.getvalue().encode(),
    }
    return Fixture(files, {"counts": expected, "labels_of": labels_of, "zip": zdata})


# ----------------------------------------------------------------------------- FMA

FMA_SMALL_GENRES = {  # genre_id: (title, parent) -- ids and titles as in the real genres.csv
    15: ("Electronic", 0),
    38: ("Experimental", 0),
    17: ("Folk", 0),
    21: ("Hip-Hop", 0),
    1235: ("Instrumental", 0),
    2: ("International", 0),
    10: ("Pop", 0),
    12: ("Rock", 0),
    25: ("Punk", 12),
    42: ("Ambient Electronic", 15),
}
# Real tracks.csv column header (two rows): top level, then field.
FMA_COLUMNS = (
    [
        ("album", c)
        for c in (
            "comments",
            "date_created",
            "date_released",
            "engineer",
            "favorites",
            "id",
            "information",
            "listens",
            "producer",
            "tags",
            "title",
            "tracks",
            "type",
        )
    ]
    + [
        ("artist", c)
        for c in (
            "active_year_begin",
            "active_year_end",
            "associated_labels",
            "bio",
            "comments",
            "date_created",
            "favorites",
            "id",
            "latitude",
            "location",
            "longitude",
            "members",
            "name",
            "related_projects",
            "tags",
            "website",
            "wikipedia_page",
        )
    ]
    + [("set", "split"), ("set", "subset")]
    + [
        ("track", c)
        for c in (
            "bit_rate",
            "comments",
            "composer",
            "date_created",
            "date_recorded",
            "duration",
            "favorites",
            "genre_top",
            "genres",
            "genres_all",
            "information",
            "interest",
            "language_code",
            "license",
            "listens",
            "lyricist",
            "number",
            "publisher",
            "tags",
            "title",
        )
    ]
)


def fma_fixture(extra_per_genre: int = 0) -> Fixture:
    """fma_metadata.zip (tracks.csv with the two-row header, genres.csv) + fma_small.zip.

    ``extra_per_genre`` adds that many more tracks per genre (80/10/10 over the splits,
    as in the real subset), so that a few clips are a visibly small part of the zip.
    """
    top_ids = [15, 38, 17, 21, 1235, 2, 10, 12]
    tracks = []  # (track_id, subset, split, genre_top_id, genres_all ids, in_zip)
    tid = 2
    for g in top_ids:
        for split in ("training", "validation", "test"):
            extra = [25] if g == 12 and split == "training" else ([42] if g == 15 else [])
            tracks.append((tid, "small", split, g, [g, *extra], True))
            tid += 3
    for g in top_ids:
        for k in range(extra_per_genre):
            split = "validation" if k % 10 == 8 else "test" if k % 10 == 9 else "training"
            tracks.append((200000 + tid, "small", split, g, [g], True))
            tid += 1
    tracks.append((99134, "small", "training", 12, [12], True))  # known empty clip
    tracks.append((140000, "small", "test", 10, [10], False))  # listed but not in the zip
    tracks.append((150000, "medium", "training", 12, [12], False))  # another subset
    tracks.append((150003, "large", "training", 12, [12], False))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["", *(a for a, _b in FMA_COLUMNS)])
    w.writerow(["", *(b for _a, b in FMA_COLUMNS)])
    w.writerow(["track_id", *([""] * len(FMA_COLUMNS))])
    names = {gid: t for gid, (t, _p) in FMA_SMALL_GENRES.items()}
    for t, subset, split, top, all_ids, _z in tracks:
        rec = dict.fromkeys(FMA_COLUMNS, "")
        rec[("set", "split")] = split
        rec[("set", "subset")] = subset
        rec[("track", "genre_top")] = names[top]
        rec[("track", "genres")] = str([top])
        rec[("track", "genres_all")] = str(sorted(set(all_ids)))
        rec[("track", "title")] = f"Track {t}"
        rec[("artist", "bio")] = '<p>Line one,\nline two with a "quote"</p>'
        rec[("track", "license")] = "Attribution-NonCommercial-ShareAlike 3.0 International"
        w.writerow([str(t), *(rec[c] for c in FMA_COLUMNS)])
    genres = io.StringIO()
    gw = csv.writer(genres, lineterminator="\n")
    gw.writerow(["genre_id", "#tracks", "parent", "title", "top_level"])
    for gid, (title, parent) in FMA_SMALL_GENRES.items():
        gw.writerow([gid, 100, parent, title, gid if parent == 0 else parent])
    meta = zip_bytes(
        {
            "fma_metadata/tracks.csv": out.getvalue().encode(),
            "fma_metadata/genres.csv": genres.getvalue().encode(),
            "fma_metadata/features.csv": b"feature,statistics\n",  # not extracted
            "fma_metadata/README.txt": b"metadata\n",
        },
        compression=zipfile.ZIP_DEFLATED,
    )
    audio: dict[str, bytes] = {"fma_small/README.txt": b"fma_small\n"}
    encoded = {seed: audio_bytes("mp3", sr=44100, seed=seed) for seed in range(5)}
    by_genre = {g: audio_bytes("mp3", sr=44100, seed=10 + i) for i, g in enumerate(top_ids)} if extra_per_genre else {}
    for k, (t, _subset, _s, g, _a, in_zip) in enumerate(tracks):
        if not in_zip:
            continue
        name = f"{t:06d}"
        data = by_genre[g] if extra_per_genre else encoded[k % 5]  # a big fixture: one tone per genre
        audio[f"fma_small/{name[:3]}/{name}.mp3"] = b"\xff\xfb\x90\x00" + bytes(1748) if t == 99134 else data
    expected_single = {"train": 8, "valid": 8, "test": 8}
    return Fixture(
        {"fma_metadata.zip": meta, "fma_small.zip": zip_bytes(audio)},
        {"splits": expected_single, "tracks": tracks, "genre_names": names},
    )


# ----------------------------------------------------------------------------- folder


def folder_fixture(root: Path) -> dict:
    """Sub-folder layout (three labels, mixed formats) under ``root``."""
    fmts = ["wav", "flac", "ogg", "mp3", "wav"]
    made = {}
    for li, label in enumerate(("calm", "energetic", "spoken")):
        for i in range(5):
            fmt = fmts[(i + li) % len(fmts)]
            p = root / label / (f"sub/take{i}.{fmt}" if i == 4 else f"take{i}.{fmt}")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(audio_bytes(fmt, seed=li * 5 + i))
            made[p.relative_to(root).as_posix()] = label
    (root / "notes.txt").write_text("not audio\n")
    (root / "loose.wav").write_bytes(audio_bytes("wav"))
    return made


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    """Sub-folder layout under ``root``: ``counts[label]`` short WAV takes per label."""
    for label, n in counts.items():
        for i in range(n):
            p = root / label / f"take{i}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(audio_bytes("wav", seconds=0.3, seed=i))
    return root
