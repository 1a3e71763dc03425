"""MagnaTagATune (Law et al. 2009): 25,863 29-second MP3 clips, 188 binary tags.

Files: ``mp3.zip.001..003`` (one zip cut in three; read as one stream, never
concatenated on disk), ``annotations_final.csv`` (tab-separated, quoted: ``clip_id``,
188 tag columns, ``mp3_path``) and ``clip_info_final.csv``. Audio lands in 16 folders
``0``..``f``.

Labels: the standard top-50 tags. They are derived again from annotations_final.csv
(50 most frequent columns) and checked against the list the literature uses (shipped in
resources/mtat/top50_tags.txt, in that list's order, which is the vocabulary order).

Split schemes (folder rule of Dieleman & Schrauwen 2014, used by Pons et al. 2018 and
Won et al. 2020): folders 0-b train, c valid, d-f test.
- ``standard``: clips with no top-50 tag removed -> 15,244 / 1,529 / 4,332 on the real data.
- ``all-clips``: every clip kept -> 18,706 / 1,825 / 5,329.
Both after removing the three broken clips (ids 35644, 55753, 57881).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

from audiocnn.constants import MULTI_LABEL
from audiocnn.datasets.acquire import RemoteDataset
from audiocnn.datasets.registry import read_resource_lines, register_dataset
from audiocnn.datasets.spec import MISSING_FROM_ARCHIVE, Candidate, Collected, PrepareContext, Remote
from audiocnn.errors import DatasetError

log = logging.getLogger("audiocnn.datasets")

# Host as used by e.g. the MTAT download scripts of several public tagging repos
# (https://mirg.city.ac.uk/datasets/magnatagatune/...); md5 sums as published with the
# Keras/kapre MTAT loaders (keunwoochoi) and torchaudio-based loaders, which agree.
BASE_URL = "https://mirg.city.ac.uk/datasets/magnatagatune/"
TRAIN_DIRS = frozenset("0123456789ab")
VALID_DIRS = frozenset("c")
TEST_DIRS = frozenset("def")
NUM_TAGS = 188


def split_of_path(mp3_path: str) -> str | None:
    """The split of a clip from its folder (first path component, 0-f)."""
    folder = mp3_path.split("/", 1)[0].lower()
    if folder in TRAIN_DIRS:
        return "train"
    if folder in VALID_DIRS:
        return "valid"
    if folder in TEST_DIRS:
        return "test"
    return None


@register_dataset
class MagnaTagATune(RemoteDataset):
    name = "mtat"
    title = "MagnaTagATune (Law et al. 2009), top-50 tags"
    task = MULTI_LABEL
    classes = 50
    split_schemes = ("standard", "all-clips")
    default_split_scheme = "standard"
    remotes = (
        Remote(
            BASE_URL + "mp3.zip.001",
            "mp3.zip.001",
            "179c91c8c2a6e9b3da3d4e69d306fd3b",
            approx_size="1.0 GB",
            group="mp3.zip",
        ),
        Remote(
            BASE_URL + "mp3.zip.002",
            "mp3.zip.002",
            "acf8265ff2e35c6ff22210e46457a824",
            approx_size="1.0 GB",
            group="mp3.zip",
        ),
        Remote(
            BASE_URL + "mp3.zip.003",
            "mp3.zip.003",
            "582dc649cabb8cd991f09e14b99349a5",
            approx_size="0.7 GB",
            group="mp3.zip",
        ),
        Remote(
            BASE_URL + "annotations_final.csv",
            "annotations_final.csv",
            "f04fa01752a8cc64f6e1ca142a0fef1d",
            approx_size="10 MB",
            extract=False,
        ),
        Remote(
            BASE_URL + "clip_info_final.csv",
            "clip_info_final.csv",
            "03ef3cb8ddcfe53fdcdb8e0cda005be2",
            approx_size="4 MB",
            extract=False,
        ),
    )
    approx_size = "2.7 GB"
    max_member_size = 16 << 20  # 29-s MP3 clips of about 0.5 MB
    partial = "zip"
    audio_group = "mp3.zip"
    license_short = "CC BY-NC-SA 1.0"
    license = "Creative Commons BY-NC-SA 1.0 (audio from Magnatune; annotations from the TagATune game)"
    citation = (
        'E. Law, K. West, M. Mandel, M. Bay and J. S. Downie, "Evaluation of algorithms using '
        'games: the case of music tagging", ISMIR 2009.'
    )
    homepage = "https://mirg.city.ac.uk/codeapps/the-magnatagatune-dataset"
    # Zero-byte / undecodable MP3s of the distribution (6/norine_braun-now_and_zen-08-gently-
    # 117-146.mp3, 8/jacob_heringman-josquin_des_prez_lute_settings-19-gintzler__pater_
    # noster-204-233.mp3, 9/american_baroque-dances_and_suites_of_rameau_and_couperin-25-le_
    # petit_rien_xiveme_ordre_couperin-88-117.mp3), dropped by every public MTAT pipeline
    # (e.g. the IDS_ERROR set of the musicnn-era preprocessing scripts, and the corrupted-file
    # list of Quint-e/equivariant-self-supervision-tempo README_datasets.md).
    always_exclude = {
        "35644": "known broken clip of the MTAT distribution (empty mp3)",
        "55753": "known broken clip of the MTAT distribution (corrupt mp3)",
        "57881": "known broken clip of the MTAT distribution (corrupt mp3)",
    }

    def locate_layout(self, folder: Path) -> Path | None:
        if (folder / "0").is_dir() and (folder / "c").is_dir() and (folder / "f").is_dir():
            return folder
        return None

    def collect(self, ctx: PrepareContext) -> Collected:
        base = ctx.audio_base or ctx.raw_dir
        annotations = ctx.files.get("annotations_final.csv")
        if annotations is None:
            raise DatasetError(f"{ctx.dataset_dir}: annotations_final.csv was not fetched")
        tags, rows = read_annotations(annotations)
        literature = read_resource_lines("mtat", "top50_tags.txt")
        derived = derive_top_tags(tags, rows, 50)
        extra: dict = {
            "annotation_rows": len(rows),
            "top50_matches_literature": set(derived) == set(literature),
        }
        if set(derived) != set(literature):
            only_derived = sorted(set(derived) - set(literature))
            only_lit = sorted(set(literature) - set(derived))
            extra["top50_derived_only"] = only_derived
            extra["top50_literature_only"] = only_lit
            log.warning(
                "mtat: the 50 most frequent tags of %s differ from the standard top-50 list "
                "(%d differ: only derived %s; only standard %s); using the standard list",
                annotations.name,
                len(only_derived),
                only_derived[:5],
                only_lit[:5],
            )
        index = {t: i for i, t in enumerate(tags)}
        missing_tags = [t for t in literature if t not in index]
        if missing_tags:
            raise DatasetError(f"{annotations}: tag columns {missing_tags} are missing")
        keep_empty = ctx.split_scheme == "all-clips"
        candidates: list[Candidate] = []
        excluded: list[dict] = []
        for clip_id, values, mp3_path in rows:
            split = split_of_path(mp3_path)
            if split is None:
                excluded.append(
                    {"id": clip_id, "path": mp3_path, "reason": f"mp3_path {mp3_path!r} is not in a folder 0-f"}
                )
                continue
            if clip_id in self.always_exclude:
                candidates.append(Candidate(clip_id, mp3_path, [], split))
                continue
            labels = [t for t in literature if values[index[t]] == "1"]
            if not labels and not keep_empty:
                excluded.append(
                    {"id": clip_id, "path": mp3_path, "reason": "no top-50 tag (the standard split drops these)"}
                )
                continue
            if not ctx.listing and not (base / mp3_path).is_file():
                excluded.append({"id": clip_id, "path": mp3_path, "reason": MISSING_FROM_ARCHIVE})
                continue
            candidates.append(Candidate(clip_id, mp3_path, labels, split))
        audio_root = str(base) if ctx.audio_base is not None else "raw"
        return Collected(
            labels=list(literature), candidates=candidates, audio_root=audio_root, excluded=excluded, extra=extra
        )


def read_annotations(path: Path) -> tuple[list[str], list[tuple[str, list[str], str]]]:
    """(tag names, rows of (clip_id, 0/1 strings per tag, mp3_path)) from annotations_final.csv."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{path}: empty annotations file") from None
        if len(header) < 3 or header[0] != "clip_id" or header[-1] != "mp3_path":
            raise DatasetError(
                f"{path}: expected a tab-separated header clip_id, <tags>, mp3_path; got {header[:2]}...{header[-1:]}"
            )
        tags = header[1:-1]
        if len(tags) != NUM_TAGS:
            log.warning("%s: %d tag columns, the published file has %d", path.name, len(tags), NUM_TAGS)
        rows = []
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise DatasetError(f"{path}:{lineno}: {len(row)} columns, the header has {len(header)}")
            rows.append((row[0].strip(), [v.strip() for v in row[1:-1]], row[-1].strip()))
    return tags, rows


def derive_top_tags(tags: list[str], rows, k: int) -> list[str]:
    """The ``k`` most frequent tags (ties: column order), as the literature derives them."""
    counts: Counter[int] = Counter()
    for _cid, values, _p in rows:
        for i, v in enumerate(values):
            if v == "1":
                counts[i] += 1
    order = sorted(range(len(tags)), key=lambda i: (-counts[i], i))
    return [tags[i] for i in order[:k]]
