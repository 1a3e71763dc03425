"""GTZAN genre collection: 1,000 30-second clips, 10 genres, 22,050 Hz mono.

Archive ``genres.tar.gz`` holds ``genres/<genre>/<genre>.000NN.au``. The widespread
repackaging (Kaggle "GTZAN Dataset - Music Genre Classification") holds
``Data/genres_original/<genre>/<genre>.000NN.wav`` instead, where ``jazz.00054.wav`` is
corrupt; both layouts are accepted and a clip that does not decode is excluded.

Split schemes
- ``fault-filtered`` (default): the artist-filtered split of Kereliuk, Sturm & Larsen
  (2015), which removes Sturm's repetitions, mislabelings and distortions: 443 train /
  197 valid / 290 test (930 clips; the other 70 are excluded with that reason). The
  lists ship as package data. Clips a list names but the archive lacks are excluded with
  the reason "listed in the fault-filtered split but not in the archive", so a partial
  copy still prepares and says exactly what is absent.
- ``random``: all 1,000 clips, stratified by genre, 80/10/10, seeded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from audiocnn.constants import SINGLE_LABEL
from audiocnn.datasets.acquire import RemoteDataset
from audiocnn.datasets.registry import read_resource_lines, register_dataset
from audiocnn.datasets.spec import Candidate, Collected, PrepareContext, Remote
from audiocnn.datasets.splits import stratified_split
from audiocnn.errors import DatasetError

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
_CLIP_RE = re.compile(r"^(?P<genre>[a-z]+)\.(?P<num>\d{5})\.(?P<ext>au|wav)$")
LAYOUT_DIRS = ("genres", "genres_original")
GTZAN_URL = "https://huggingface.co/datasets/marsyas/gtzan/resolve/main/data/genres.tar.gz"
ORIGINAL_HOST = "http://opihi.cs.uvic.ca/sound"  # offline since 2022: a mirror for --source


@register_dataset
class GTZAN(RemoteDataset):
    name = "gtzan"
    title = "GTZAN genre collection (Tzanetakis & Cook 2002)"
    task = SINGLE_LABEL
    classes = 10
    split_schemes = ("fault-filtered", "random")
    default_split_scheme = "fault-filtered"
    # The original archive (md5 as in mirdata's gtzan_genre loader and
    # torchaudio.datasets.GTZAN), as Marsyas publishes it on Hugging Face (dataset
    # marsyas/gtzan, data/genres.tar.gz, 1.23 GB). The original host,
    # http://opihi.cs.uvic.ca/sound/, has been offline since 2022; it stays reachable as a
    # mirror (--source http://opihi.cs.uvic.ca/sound) should it come back.
    remotes = (
        Remote(
            url=GTZAN_URL,
            filename="genres.tar.gz",
            checksum="5b3d6dddb579ab49814ab86dba69e7c7",
            algorithm="md5",
            approx_size="1.2 GB",
        ),
    )
    approx_size = "1.2 GB"
    # 30-s clips of 22,050 Hz 16-bit mono: 1.3 MB each (the Kaggle zip's CSVs are smaller still)
    max_member_size = 16 << 20
    partial_refusal = (
        "gtzan is one gzip stream (genres.tar.gz): no part of it can be read without the bytes before it, "
        "so it cannot be cut; prepare it whole (1.2 GB)"
    )
    license_short = "none stated (research use)"
    license = "No explicit license; distributed by the authors for research use (mirdata: license unknown)."
    citation = (
        'G. Tzanetakis and P. Cook, "Musical genre classification of audio signals", '
        "IEEE Trans. Speech and Audio Processing 10(5), 2002. Fault-filtered split: "
        'C. Kereliuk, B. L. Sturm and J. Larsen, "Deep learning and music adversaries", '
        "IEEE Trans. Multimedia 17(11), 2015."
    )
    homepage = "http://marsyas.info/downloads/datasets.html"
    unavailable_hint = (
        "genres.tar.gz comes from Hugging Face (dataset marsyas/gtzan, file data/genres.tar.gz). "
        'Other copies: Kaggle ("GTZAN Dataset - Music Genre Classification", the '
        "genres_original/*.wav variant; download it by hand and pass the file or its folder "
        f"with --source), or the original host, offline since 2022 (--source {ORIGINAL_HOST})"
    )
    # jazz.00054.wav in the genres_original repackaging cannot be decoded (widely reported
    # by Kaggle users of "GTZAN Dataset - Music Genre Classification").
    known_bad = {"jazz.00054": "known corrupt in the genres_original (.wav) repackaging"}

    def locate_layout(self, folder: Path) -> Path | None:
        """A folder holding ``genres/`` or ``genres_original/`` with genre subfolders."""
        for d in _layout_dirs(folder, depth=3):
            return d
        return None

    def collect(self, ctx: PrepareContext) -> Collected:
        base = ctx.audio_base or ctx.raw_dir
        layout = next(iter(_layout_dirs(base, depth=3)), None)
        if layout is None:
            raise DatasetError(
                f"{base}: no GTZAN layout found (expected genres/<genre>/<genre>.000NN.au "
                "or genres_original/<genre>/<genre>.000NN.wav)",
                hint="pass the original genres.tar.gz with --source",
            )
        clips: dict[str, tuple[str, str]] = {}  # id -> (path relative to base, genre)
        for genre_dir in sorted(p for p in layout.iterdir() if p.is_dir()):
            for f in sorted(genre_dir.iterdir()):
                m = _CLIP_RE.match(f.name)
                if not m or m.group("genre") != genre_dir.name or genre_dir.name not in GENRES:
                    continue
                cid = f"{m.group('genre')}.{m.group('num')}"
                clips[cid] = (f.relative_to(base).as_posix(), m.group("genre"))
        if not clips:
            raise DatasetError(f"{layout}: no GTZAN clips (<genre>.000NN.au/.wav) found")

        excluded: list[dict] = []
        extra: dict = {"layout": layout.name, "clips_found": len(clips)}
        if ctx.split_scheme == "fault-filtered":
            assignment = fault_filtered_split()
            split_of = {cid: split for cid, split in assignment.items()}
            for cid, (path, _g) in clips.items():
                if cid not in split_of:
                    excluded.append(
                        {
                            "id": cid,
                            "path": path,
                            "reason": "not in the fault-filtered split (Kereliuk, Sturm & Larsen 2015 "
                            "drop it as a repetition, mislabeling or distortion)",
                        }
                    )
            absent = sorted(cid for cid in split_of if cid not in clips)
            for cid in absent:
                excluded.append(
                    {"id": cid, "path": "", "reason": "listed in the fault-filtered split but not in the archive"}
                )
            extra["missing_from_archive"] = len(absent)
            if absent:
                logging.getLogger("audiocnn.datasets").warning(
                    "gtzan: %d of the %d clips of the fault-filtered split are not in the archive "
                    "(e.g. %s); they are listed as excluded",
                    len(absent),
                    len(split_of),
                    absent[0],
                )
        else:
            split_of = stratified_split([(cid, g) for cid, (_p, g) in clips.items()], seed=ctx.seed)
        candidates = [
            Candidate(id=cid, path=path, labels=[genre], split=split_of[cid])
            for cid, (path, genre) in sorted(clips.items())
            if cid in split_of
        ]
        audio_root = str(base) if ctx.audio_base is not None else "raw"
        return Collected(
            labels=list(GENRES), candidates=candidates, audio_root=audio_root, excluded=excluded, extra=extra
        )


def _layout_dirs(folder: Path, depth: int):
    """Yield folders named genres/genres_original that hold at least one genre subfolder."""
    if depth < 0 or not folder.is_dir():
        return
    if folder.name in LAYOUT_DIRS and any((folder / g).is_dir() for g in GENRES):
        yield folder
        return
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        yield from _layout_dirs(child, depth - 1)


def fault_filtered_split() -> dict[str, str]:
    """Clip id (``blues.00029``) -> split, from the packaged Kereliuk/Sturm lists.

    Lists as published in coreyker/dnn-mgr (train/valid/test_filtered.txt, 1-based
    indices) and, as paths, in jordipons/sklearn-audio-transfer-learning
    (data/index/GTZAN/*_filtered.txt); both agree.
    """
    out: dict[str, str] = {}
    for split, fname in (
        ("train", "train_filtered.txt"),
        ("valid", "valid_filtered.txt"),
        ("test", "test_filtered.txt"),
    ):
        for line in read_resource_lines("gtzan", fname):
            stem = line.rsplit("/", 1)[-1]
            cid = stem.rsplit(".", 1)[0]
            if cid in out:
                raise DatasetError(f"packaged GTZAN split lists name {cid} twice")
            out[cid] = split
    return out
