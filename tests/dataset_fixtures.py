"""Fixture archives in each dataset's real layout, and a real HTTP server on 127.0.0.1.

The archives hold tiny synthetic clips (about one second each) so that the whole
prepare -> info -> verify path runs in seconds. Nothing here touches the network
beyond 127.0.0.1.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import resource
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import synth_tone

from audiocnn.cli.main import run


def no_slow_retries(monkeypatch, retries: int = 1) -> None:
    """Downloads in tests: no back-off between tries, ``retries`` retries, no mirror taken
    from the environment."""
    monkeypatch.setenv("AUDIOCNN_DOWNLOAD_BACKOFF", "0")
    monkeypatch.setenv("AUDIOCNN_DOWNLOAD_RETRIES", str(retries))
    monkeypatch.delenv("AUDIOCNN_MIRROR", raising=False)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of one in-process ``audiocnn`` command."""
    capsys.readouterr()
    code = run(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def run_limited(
    script: str, *args: str, memory_mb: int = 1024, file_mb: int = 16, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``python -c script args...`` with its address space and the size of any file it
    writes capped (a write past ``file_mb`` fails with EFBIG, as on a full disk), and a
    timeout: a hostile input that regresses fails its test instead of eating the machine."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limits,  # noqa: PLW1509 (no threads to deadlock in the child before exec)
        env=env,
    )


# ----------------------------------------------------------------------------- audio


def audio_bytes(fmt: str, *, seconds: float = 1.0, sr: int = 22050, seed: int = 0, channels: int = 1) -> bytes:
    """Encoded synthetic audio: fmt in au, wav, flac, ogg, mp3."""
    y = synth_tone(seconds, sr, freqs=(220.0 + 40 * seed, 330.0, 495.0), channels=channels, seed=seed)
    buf = io.BytesIO()
    kw = {
        "au": dict(format="AU", subtype="PCM_16"),
        "wav": dict(format="WAV", subtype="PCM_16"),
        "flac": dict(format="FLAC"),
        "ogg": dict(format="OGG", subtype="VORBIS"),
        "mp3": dict(format="MP3"),
    }[fmt]
    sf.write(buf, y, sr, **kw)
    return buf.getvalue()


def digest(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()


# ----------------------------------------------------------------------------- archives


def tar_gz(files: dict[str, bytes], *, mode: str = "w:gz", dirs: tuple[str, ...] = ()) -> bytes:
    """A tar (gzipped unless ``mode="w"``) of ``files``, folders ``dirs`` first."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def split_bytes(data: bytes, parts: int) -> list[bytes]:
    step = -(-len(data) // parts)
    return [data[i * step : (i + 1) * step] for i in range(parts)]


# ----------------------------------------------------------------------------- GTZAN

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


def gtzan_pick() -> dict[str, str]:
    """Per genre: the first clip of each fault-filtered split, plus one clip in no list.

    Returns clip id -> expected split ("excluded" for the unlisted ones).
    """
    from audiocnn.datasets.gtzan import fault_filtered_split

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
    from audiocnn.datasets.registry import read_resource_lines

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
    from audiocnn.datasets import mtg_jamendo

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
    from dataclasses import replace

    from audiocnn.datasets import msd

    for table in (msd.CHOI_REMOTES, msd.WON_REMOTES):
        for name, r in list(table.items()):
            monkeypatch.setitem(table, name, replace(r, checksum=digest(files[name], "sha256"), algorithm="sha256"))
    spec = msd.MillionSongDataset
    monkeypatch.setattr(spec, "remotes", tuple(msd.CHOI_REMOTES.values()) + tuple(msd.WON_REMOTES.values()))
    monkeypatch.setattr(msd, "WON_TRAIN", won_train)
    monkeypatch.setattr(msd, "WON_SIZES", {"filtered_list_train.cP": None, "filtered_list_test.cP": None})


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


# ----------------------------------------------------------------------------- HTTP server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr logging
        pass

    def do_GET(self):  # noqa: N802
        srv: FixtureServer = self.server.fixture  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        rng = self.headers.get("Range")
        entry = srv.routes.get(path)
        if entry is None:
            srv.record(path, rng, 404, 0)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, mode = entry
        if mode.startswith("redirect-to:"):  # as Hugging Face's resolve/ URLs answer: 302 to a CDN
            srv.record(path, rng, 302, 0)
            self.send_response(302)
            self.send_header("Location", mode.split(":", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "redirect-loop":
            srv.record(path, rng, 302, 0)
            self.send_response(302)
            self.send_header("Location", path)  # to itself, for ever
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        n_requests = sum(1 for r in srv.requests if r["path"] == path)
        start = 0
        stop = len(data)  # exclusive
        status = 200
        if rng and mode != "ignore-range":
            first, _dash, last = rng.split("=", 1)[1].partition("-")
            start = int(first)
            if last:
                stop = min(len(data), int(last) + 1)
            if start >= len(data):
                srv.record(path, rng, 416, 0)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:stop]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if mode == "corrupt-once" and n_requests == 0:
            body = bytes(len(body))  # a whole answer of the wrong bytes, as a bad cache serves
        if mode == "stall":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            srv.record(path, rng, status, len(body) // 2)
            time.sleep(srv.stall_seconds)  # then the connection closes: a server that hangs
            self.close_connection = True
            return
        if mode == "drop-once" and n_requests == 0:
            cut = len(body) // 2
            self.wfile.write(body[:cut])
            self.wfile.flush()
            srv.record(path, rng, status, cut)
            self.close_connection = True
            self.connection.shutdown(2)  # drop mid-file, as a flaky host does
            return
        self.wfile.write(body)
        srv.record(path, rng, status, len(body))


class FixtureServer:
    """Serves registered byte strings; modes: normal, drop-once, corrupt-once, ignore-range,
    stall (half the body, then silence for ``stall_seconds``), redirect-loop, redirect-to:PATH.
    Range requests may name an end (``bytes=a-b``), as :mod:`audiocnn.datasets.remotezip` asks."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.requests: list[dict] = []
        self.stall_seconds = 3.0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fixture = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, data: bytes, mode: str = "normal") -> str:
        self.routes[path] = (data, mode)
        return self.base_url + path

    def add_files(self, prefix: str, files: dict[str, bytes]) -> str:
        for name, data in files.items():
            self.add(f"{prefix.rstrip('/')}/{name}", data)
        return self.base_url + prefix.rstrip("/")

    def record(self, path: str, rng: str | None, status: int, sent: int) -> None:
        with self._lock:
            self.requests.append({"path": path, "range": rng, "status": status, "sent": sent})

    def bytes_served(self, path: str) -> int:
        return sum(r["sent"] for r in self.requests if r["path"] == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def http_server():
    srv = FixtureServer()
    try:
        yield srv
    finally:
        srv.close()


def patch_remotes(monkeypatch, dataset: str, files: dict[str, bytes], urls: dict[str, str] | None = None) -> None:
    """Give a registered dataset the fixture's digests (same algorithm, same file names)."""
    from dataclasses import replace

    from audiocnn.datasets import get_dataset

    spec = get_dataset(dataset)
    new = []
    for r in spec.remotes:
        if r.filename in files:
            r = replace(r, checksum=digest(files[r.filename], r.algorithm), size=None)
        if urls and r.filename in urls:
            r = replace(r, url=urls[r.filename])
        new.append(r)
    monkeypatch.setattr(type(spec), "remotes", tuple(new))


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


__all__ = [
    "FixtureServer",
    "audio_bytes",
    "digest",
    "fma_fixture",
    "folder_fixture",
    "gtzan_fixture",
    "gtzan_pick",
    "http_server",
    "mtat_fixture",
    "msd_fixture",
    "msd_ids",
    "mtg_fixture",
    "patch_msd",
    "pickle_protocol0_strings",
    "patch_mtg_pins",
    "patch_remotes",
    "run_limited",
    "split_bytes",
    "tar_gz",
    "write_files",
    "zip_bytes",
    "np",
]
