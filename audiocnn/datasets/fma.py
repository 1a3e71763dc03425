"""FMA: A Dataset For Music Analysis (Defferrard et al. 2017): fma-small/medium/large/full.

Files: ``fma_metadata.zip`` (only ``tracks.csv`` and ``genres.csv`` are extracted;
tracks.csv has a two-row column header (e.g. ``set,split``) followed by a ``track_id``
index row) and the subset's audio zip (``fma_<subset>/<NNN>/<NNNNNN>.mp3``).

Subsets nest: small (8,000 tracks, 8 balanced genres) ⊂ medium (25,000, 16 genres) ⊂
large (106,574 30-s clips) and full (the same tracks untrimmed). Split: the official
``('set', 'split')`` column (training/validation/test -> train/valid/test).

Tasks: single-label over ``('track', 'genre_top')`` (default; tracks without one are
excluded), or ``--task multi-label`` over ``('track', 'genres_all')`` (genre ids mapped
to names through genres.csv).
"""

from __future__ import annotations

import ast
import csv
import logging
import sys
from pathlib import Path

from audiocnn.constants import MULTI_LABEL, SINGLE_LABEL
from audiocnn.datasets.acquire import RemoteDataset
from audiocnn.datasets.registry import register_dataset
from audiocnn.datasets.spec import MISSING_FROM_ARCHIVE, Candidate, Collected, PrepareContext, Remote
from audiocnn.errors import DatasetError, next_call

log = logging.getLogger("audiocnn.datasets")

# URLs and sha1 sums from the FMA README (github.com/mdeff/fma, "Data" and "History,
# 2017-05-09 pre-publication release"); sizes as stated there.
BASE_URL = "https://os.unil.cloud.switch.ch/fma/"
METADATA = Remote(
    BASE_URL + "fma_metadata.zip",
    "fma_metadata.zip",
    "f0df49ffe5f2a6008d7dc83c6915b31835dfe733",
    "sha1",
    approx_size="342 MiB",
)
SUBSET_REMOTES = {
    "small": Remote(
        BASE_URL + "fma_small.zip",
        "fma_small.zip",
        "ade154f733639d52e35e32f5593efe5be76c6d70",
        "sha1",
        approx_size="7.2 GiB",
    ),
    "medium": Remote(
        BASE_URL + "fma_medium.zip",
        "fma_medium.zip",
        "c67b69ea232021025fca9231fc1c7c1a063ab50b",
        "sha1",
        approx_size="22 GiB",
    ),
    "large": Remote(
        BASE_URL + "fma_large.zip",
        "fma_large.zip",
        "497109f4dd721066b5ce5e5f250ec604dc78939e",
        "sha1",
        approx_size="93 GiB",
    ),
    "full": Remote(
        BASE_URL + "fma_full.zip",
        "fma_full.zip",
        "0f0ace23fbe9ba30ecb7e95f763e435ea802b8ab",
        "sha1",
        approx_size="879 GiB",
    ),
}
SUBSET_ORDER = ("small", "medium", "large")
SPLIT_NAMES = {"training": "train", "validation": "valid", "test": "test"}

# Tracks whose 30-s clip holds no audio because the API's duration was wrong, so the
# trimming cut past the end (mdeff/fma issues #4, #8, #44 and the FMA wiki "known issues").
# They are in small and hence in medium and large; fma_full has the untrimmed files.
EMPTY_CLIPS = {
    "099134": "known empty clip of FMA (wrong duration metadata, trimmed past the end; mdeff/fma#44)",
    "108925": "known empty clip of FMA (wrong duration metadata, trimmed past the end; mdeff/fma#44)",
    "133297": "known empty clip of FMA (wrong duration metadata, trimmed past the end; mdeff/fma#44)",
}


class _FMA(RemoteDataset):
    subset: str
    task = SINGLE_LABEL
    tasks = (SINGLE_LABEL, MULTI_LABEL)
    split_schemes = ("official",)
    default_split_scheme = "official"
    license_short = "CC BY 4.0 metadata + per-track CC audio"
    license = (
        "Metadata CC BY 4.0; audio under the Creative Commons license each artist chose "
        "(per track in tracks.csv); for research use"
    )
    citation = (
        'M. Defferrard, K. Benzi, P. Vandergheynst and X. Bresson, "FMA: A Dataset For Music '
        'Analysis", ISMIR 2017. arXiv:1612.01840'
    )
    homepage = "https://github.com/mdeff/fma"
    partial = "zip"
    # generous: fma_full holds untrimmed tracks (some run long) and the metadata zip CSVs of
    # hundreds of MB; the 30-s subsets hold clips of about 0.5 MB
    max_member_size = 2 << 30

    def extract_members(self, group: str) -> list[str] | None:
        if group == METADATA.filename:
            return ["fma_metadata/tracks.csv", "fma_metadata/genres.csv"]
        return None

    def locate_layout(self, folder: Path) -> Path | None:
        sub = folder / f"fma_{self.subset}"
        if sub.is_dir():
            return folder
        return None

    def collect(self, ctx: PrepareContext) -> Collected:
        meta_dir = ctx.raw_dir / "fma_metadata"
        tracks_csv = meta_dir / "tracks.csv"
        genres_csv = meta_dir / "genres.csv"
        if ctx.audio_base is not None:
            # Extracted copy used in place: the metadata may sit next to it.
            for cand in (ctx.audio_base / "fma_metadata", ctx.audio_base):
                if (cand / "tracks.csv").is_file():
                    tracks_csv, genres_csv = cand / "tracks.csv", cand / "genres.csv"
                    break
        for p in (tracks_csv, genres_csv):
            if not p.is_file():
                raise DatasetError(
                    f"{p}: missing; fma_metadata.zip was not extracted",
                    hint=f"`{next_call('prepare', self.name, force=True)}`",
                )
        genre_names = read_genres(genres_csv)
        base = ctx.audio_base or ctx.raw_dir
        audio_dir = base / f"fma_{self.subset}"
        multi = ctx.task == MULTI_LABEL
        keep = set(SUBSET_ORDER[: SUBSET_ORDER.index(self.subset) + 1]) if self.subset in SUBSET_ORDER else None
        candidates: list[Candidate] = []
        excluded: list[dict] = []
        labels_seen: set[str] = set()
        for tid, subset, split_name, genre_top, genres_all in read_tracks(tracks_csv):
            if keep is not None and subset not in keep:
                continue
            track_id = f"{int(tid):06d}"
            rel = f"fma_{self.subset}/{track_id[:3]}/{track_id}.mp3"
            split = SPLIT_NAMES.get(split_name)
            if split is None:
                excluded.append({"id": track_id, "path": rel, "reason": f"unknown split {split_name!r} in tracks.csv"})
                continue
            if multi:
                try:
                    ids = ast.literal_eval(genres_all) if genres_all else []
                    labels = sorted({genre_names[int(g)] for g in ids})
                except (ValueError, SyntaxError, KeyError) as exc:
                    excluded.append({"id": track_id, "path": rel, "reason": f"bad genres_all {genres_all!r} ({exc})"})
                    continue
                if not labels:
                    excluded.append({"id": track_id, "path": rel, "reason": "no genre in genres_all"})
                    continue
            else:
                if not genre_top:
                    excluded.append({"id": track_id, "path": rel, "reason": "no genre_top"})
                    continue
                labels = [genre_top]
            if track_id in self.always_exclude:
                candidates.append(Candidate(track_id, rel, labels, split))
                labels_seen.update(labels)
                continue
            if not ctx.listing and not (base / rel).is_file():
                excluded.append({"id": track_id, "path": rel, "reason": MISSING_FROM_ARCHIVE})
                continue
            candidates.append(Candidate(track_id, rel, labels, split))
            labels_seen.update(labels)
        if not ctx.listing and not audio_dir.is_dir():
            raise DatasetError(
                f"{audio_dir}: no fma_{self.subset} folder; the audio archive was not extracted",
                hint=f"`{next_call('prepare', self.name, force=True)}`",
            )
        return Collected(
            labels=sorted(labels_seen),
            candidates=candidates,
            audio_root=str(base) if ctx.audio_base is not None else "raw",
            excluded=excluded,
            extra={"subset": self.subset},
        )


def read_genres(path: Path) -> dict[int, str]:
    """genres.csv: genre_id -> title."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "genre_id" not in reader.fieldnames or "title" not in reader.fieldnames:
            raise DatasetError(f"{path}: expected columns genre_id and title, got {reader.fieldnames}")
        return {int(row["genre_id"]): row["title"] for row in reader}


def read_tracks(path: Path):
    """Yield (track_id, subset, split, genre_top, genres_all) from tracks.csv.

    The file has two header rows (top level, e.g. ``set``/``track``; field, e.g.
    ``split``/``genre_top``), then a ``track_id`` row naming the index column.
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # artist bios are long
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        try:
            top = next(reader)
            sub = next(reader)
        except StopIteration:
            raise DatasetError(f"{path}: expected a two-row header") from None
        # Forward-fill the top level as pandas does for a MultiIndex header.
        cols: dict[tuple[str, str], int] = {}
        current = ""
        for i, (a, b) in enumerate(zip(top, sub)):
            current = a or current
            cols[(current, b)] = i
        need = [("set", "subset"), ("set", "split"), ("track", "genre_top"), ("track", "genres_all")]
        missing = [c for c in need if c not in cols]
        if missing:
            raise DatasetError(f"{path}: columns {missing} are missing from the two-row header")
        i_subset, i_split, i_top, i_all = (cols[c] for c in need)
        for lineno, row in enumerate(reader, 3):
            if not row or row[0] == "track_id":
                continue
            if len(row) < len(sub):
                raise DatasetError(f"{path}:{lineno}: {len(row)} columns, the header has {len(sub)}")
            if not row[0].isdigit():
                raise DatasetError(f"{path}:{lineno}: track id {row[0]!r} is not a number")
            yield row[0], row[i_subset], row[i_split], row[i_top], row[i_all]


def _make(subset: str, classes: int | None, title: str, size: str) -> type[_FMA]:
    attrs = {
        "name": f"fma-{subset}",
        "subset": subset,
        "title": title,
        "classes": classes,
        "remotes": (METADATA, SUBSET_REMOTES[subset]),
        "audio_group": SUBSET_REMOTES[subset].filename,
        "approx_size": size,
        "always_exclude": EMPTY_CLIPS if subset != "full" else {},
        "__doc__": f"FMA {subset} subset.",
    }
    cls = type(f"FMA{subset.capitalize()}", (_FMA,), attrs)
    return register_dataset(cls)


FMASmall = _make("small", 8, "FMA small: 8,000 30-s clips, 8 balanced genres", "7.5 GiB")
FMAMedium = _make("medium", 16, "FMA medium: 25,000 30-s clips, 16 unbalanced genres", "22.3 GiB")
FMALarge = _make("large", 16, "FMA large: 106,574 30-s clips (genre_top: 16; genres_all: 161)", "93.3 GiB")
FMAFull = _make("full", 16, "FMA full: 106,574 untrimmed tracks (genre_top: 16; genres_all: 161)", "879 GiB")
