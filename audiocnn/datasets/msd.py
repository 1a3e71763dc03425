"""Million Song Dataset, last.fm top-50 tags, with the previews you already have.

The MSD's audio (30-s 7digital previews) cannot be downloaded any more; ``prepare msd
--source DIR`` indexes the previews a user holds, named by MSD track id
(``TRAAAGR128F425B14B.mp3``, ``TRAAAGR128F425B14B.clip.mp3``, in any folder layout), and
applies the split the tagging literature uses, reporting how many of each split's tracks
are present (the rest are simply absent, not errors).

Split schemes (downloaded at pinned commits; files of the data repositories, never code):

- ``won2020`` (default): the lists of Won et al. 2020 (minzwon/sota-music-tagging-models,
  ``split/msd/filtered_list_{train,test}.cP``: Choi's split keeping clips of at least
  29.1 s; the first 201,680 ids of the train list are train, the other 11,774 valid;
  28,435 test), as in Lee et al. 2017 (sample-level CNN) and Won et al. 2020.
- ``choi2017``: Choi et al. 2017's own split (keunwoochoi/MSD_split_for_tagging:
  ``{train,valid,test}_x_msd_id.txt``, 201,680 / 12,634 / 28,540).

Labels: the 50 last.fm tags of Choi et al. (``tags.py`` there; ``50tagList.txt`` of Won et
al., the same list in the same order), a tag counting where its last.fm score is above 50,
read from Choi's ``{train,valid,test}_y.npy`` (boolean arrays, read with
``allow_pickle=False``). Won et al.'s lists are Python pickles: they are never unpickled;
:func:`read_pickled_strings` walks their opcodes (``pickletools``) and accepts nothing but
a list of strings, so no code in them can run.
"""

from __future__ import annotations

import logging
import pickletools
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from audiocnn.audio import find_audio_files
from audiocnn.constants import MULTI_LABEL
from audiocnn.datasets.acquire import fetch_remote
from audiocnn.datasets.registry import read_resource_lines, register_dataset
from audiocnn.datasets.spec import Candidate, Collected, DatasetSpec, PrepareContext, Remote
from audiocnn.errors import DatasetError, UsageError

log = logging.getLogger("audiocnn.datasets")

MSD_ID = re.compile(r"^TR[A-Z0-9]{16}$")
CHOI_COMMIT = "2e08b89e5bc861fb01983068bf62dcfbce154567"
CHOI_BASE = f"https://raw.githubusercontent.com/keunwoochoi/MSD_split_for_tagging/{CHOI_COMMIT}/"
WON_COMMIT = "ffd9c4694a0f493ffd9a8ddf1302622c5f445358"
WON_BASE = f"https://raw.githubusercontent.com/minzwon/sota-music-tagging-models/{WON_COMMIT}/split/msd/"
#: Won et al.: "I used first 201680 IDs for training set and rest 11774 IDs for validation".
WON_TRAIN = 201680
WON_SIZES = {"filtered_list_train.cP": 213454, "filtered_list_test.cP": 28435}
SPLITS = (("train", "train"), ("valid", "valid"), ("test", "test"))


def _choi(name: str, digest: str, algorithm: str, approx: str) -> Remote:
    return Remote(CHOI_BASE + name, name, digest, algorithm, approx_size=approx, extract=False)


# sha256 of the files at CHOI_COMMIT; train_y.npy was larger than the copy these were taken
# from held, so its git blob id at that commit is pinned instead (as exact a check).
CHOI_REMOTES = {
    "train_x_msd_id.txt": _choi(
        "train_x_msd_id.txt", "06399a08026b0ee9dd9b3e0cb06fc247abf869d84ffcf7400a110a21f1cd98ae", "sha256", "3.7 MB"
    ),
    "valid_x_msd_id.txt": _choi(
        "valid_x_msd_id.txt", "2b19a3327ba8d380aeda263b837a999f0fd39457ffd707923be9cb96226ad43a", "sha256", "240 kB"
    ),
    "test_x_msd_id.txt": _choi(
        "test_x_msd_id.txt", "38fb65450e2e25227f35103c1c30657b97f07a77bfdcb21425c9a75824710437", "sha256", "542 kB"
    ),
    "train_y.npy": _choi("train_y.npy", "373e0c4e8ec182199797f7a8a486fc416e18f3ac", "git-blob-sha1", "10 MB"),
    "valid_y.npy": _choi(
        "valid_y.npy", "5ef6a55171b07e01509acfbdb1736b12ae5e60af3327360ccd0efd67579a7cad", "sha256", "632 kB"
    ),
    "test_y.npy": _choi(
        "test_y.npy", "974c8d9db55b87ed942b5d5e2d36b5cc76b023da46a3f42aa831825612b68b32", "sha256", "1.4 MB"
    ),
}
# No checksum is pinned for Won et al.'s two lists: no copy of them could be read when
# this was written, so no digest was seen. They are checked by structure instead (a
# pickled list of MSD ids, of the published lengths), and nothing in them is executed.
WON_REMOTES = {
    name: Remote(WON_BASE + name, name, None, approx_size=size, extract=False)
    for name, size in (("filtered_list_train.cP", "4.1 MB"), ("filtered_list_test.cP", "0.8 MB"))
}

# -------------------------------------------------------------------- pickled lists, safely
_STRING_OPS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
    "BINBYTES",
    "SHORT_BINBYTES",
    "BINBYTES8",
}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}


def read_pickled_strings(path: Path) -> list[str]:
    """The list of strings a pickle holds, read opcode by opcode and never unpickled.

    Only what a pickled list of strings is made of is accepted (protocol 0's ``(lp1 S'..'
    p2 a`` as Python 2's cPickle wrote Won et al.'s lists, and the binary protocols);
    any other opcode -- a global, a call, a build -- refuses the file.
    """
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    try:
        ops = list(pickletools.genops(path.read_bytes()))
    except (ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable pickle ({exc})") from None
    for op, arg, pos in ops:
        try:
            if not _apply(op.name, arg, stack, marks, memo, path, pos):
                break
        except (IndexError, KeyError, TypeError) as exc:
            raise DatasetError(
                f"{path}: opcode {op.name} at byte {pos}: malformed pickle ({type(exc).__name__}: {exc}); "
                "not a plain pickled list of strings (nothing in it was run)"
            ) from None
    if len(stack) != 1 or not isinstance(stack[0], list) or not all(isinstance(s, str) for s in stack[0]):
        raise DatasetError(f"{path}: expected a pickled list of strings")
    return stack[0]


def _apply(name: str, arg: Any, stack: list[Any], marks: list[int], memo: dict[int, Any], path: Path, pos: int) -> bool:
    """One opcode of a pickled list of strings on ``stack``; False at STOP. Malformed input
    (a pop of nothing, an unknown memo key) raises IndexError or KeyError to the caller."""
    if name in _STRING_OPS:
        stack.append(arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg))
    elif name == "EMPTY_LIST":
        stack.append([])
    elif name == "LIST":
        start = marks.pop()
        items, stack[start:] = stack[start:], [[]]
        stack[-1].extend(items)
    elif name == "MARK":
        marks.append(len(stack))
    elif name == "APPEND":
        item = stack.pop()
        _as_list(stack, path, pos).append(item)
    elif name == "APPENDS":
        start = marks.pop()
        items, stack[start:] = stack[start:], []
        _as_list(stack, path, pos).extend(items)
    elif name in _MEMO_PUT:
        memo[arg if name != "MEMOIZE" else len(memo)] = stack[-1]
    elif name in _MEMO_GET:
        stack.append(memo[arg])
    elif name == "STOP":
        return False
    elif name not in ("PROTO", "FRAME"):
        raise DatasetError(
            f"{path}: opcode {name} at byte {pos}: not a plain pickled list of strings; "
            "refusing to read it (nothing in it was run)"
        )
    return True


def _as_list(stack: list[Any], path: Path, pos: int) -> list:
    if not stack or not isinstance(stack[-1], list):
        raise DatasetError(f"{path}: byte {pos}: appending to something that is not a list")
    return stack[-1]


# -------------------------------------------------------------------- labels and splits
def read_id_list(path: Path) -> list[str]:
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [i for i in ids if not MSD_ID.match(i)]
    if bad:
        raise DatasetError(f"{path}: {len(bad)} lines are not MSD track ids (e.g. {bad[0]!r})")
    return ids


def choi_labels(files: dict[str, Path], tags: list[str]) -> dict[str, list[str]]:
    """MSD id -> its tags, from Choi's id lists and boolean ``*_y.npy`` arrays."""
    out: dict[str, list[str]] = {}
    for split in ("train", "valid", "test"):
        ids = read_id_list(files[f"{split}_x_msd_id.txt"])
        y_path = files[f"{split}_y.npy"]
        try:
            y = np.load(y_path, allow_pickle=False)
        except ValueError as exc:
            raise DatasetError(f"{y_path}: not a plain numeric .npy array ({exc})") from None
        if y.shape != (len(ids), len(tags)):
            raise DatasetError(f"{y_path}: shape {y.shape}, expected ({len(ids)}, {len(tags)}) as its id list")
        for msd_id, row in zip(ids, y.astype(bool), strict=True):
            out[msd_id] = [t for t, on in zip(tags, row, strict=True) if on]
    return out


def split_of(scheme: str, files: dict[str, Path]) -> dict[str, str]:
    """MSD id -> train/valid/test under ``scheme``."""
    out: dict[str, str] = {}
    if scheme == "choi2017":
        for split in ("train", "valid", "test"):
            out.update(dict.fromkeys(read_id_list(files[f"{split}_x_msd_id.txt"]), split))
        return out
    lists = {}
    for name, expected in WON_SIZES.items():
        ids = read_pickled_strings(files[name])
        bad = [i for i in ids if not MSD_ID.match(i)]
        if bad:
            raise DatasetError(f"{files[name]}: {len(bad)} entries are not MSD track ids (e.g. {bad[0]!r})")
        if expected is not None and len(ids) != expected:
            log.warning("%s: %d ids, the published list has %d", name, len(ids), expected)
        lists[name] = ids
    train = lists["filtered_list_train.cP"]
    out.update(dict.fromkeys(train[:WON_TRAIN], "train"))
    out.update(dict.fromkeys(train[WON_TRAIN:], "valid"))
    out.update(dict.fromkeys(lists["filtered_list_test.cP"], "test"))
    return out


def msd_id_of(path: Path) -> str | None:
    stem = path.name.split(".", 1)[0]
    return stem if MSD_ID.match(stem) else None


@register_dataset
class MillionSongDataset(DatasetSpec):
    name = "msd"
    title = "Million Song Dataset, last.fm top-50 tags (your own 7digital previews)"
    task = MULTI_LABEL
    classes = 50
    split_schemes = ("won2020", "choi2017")
    default_split_scheme = "won2020"
    remotes = tuple(CHOI_REMOTES.values()) + tuple(WON_REMOTES.values())
    approx_size = "20 MB (lists)"
    indexes_source = True
    partial_refusal = "msd indexes previews you already have: there is nothing to download in part"
    license = (
        "MSD metadata: research use (LabROSA / The Echo Nest); last.fm tags: non-commercial research "
        "(Last.fm dataset terms); the previews are yours"
    )
    license_short = "research use; your previews"
    citation = (
        'T. Bertin-Mahieux, D. P. W. Ellis, B. Whitman and P. Lamere, "The Million Song Dataset", '
        'ISMIR 2011. Split: K. Choi, G. Fazekas and M. Sandler, "Automatic tagging using deep '
        'convolutional neural networks", ISMIR 2016 (github.com/keunwoochoi/MSD_split_for_tagging); '
        'filtered as in M. Won, A. Ferraro, D. Bogdanov and X. Serra, "Evaluation of CNN-based '
        'automatic music tagging models", SMC 2020 (github.com/minzwon/sota-music-tagging-models).'
    )
    homepage = "http://millionsongdataset.com/"

    def acquire(self, ctx: PrepareContext) -> None:
        folders = [Path(s).expanduser() for s in ctx.sources if Path(s).expanduser().is_dir()]
        if len(folders) != 1:
            raise UsageError(
                "prepare msd needs source=DIR: the folder holding your MSD previews (named by MSD track id)",
                hint="source=~/msd-previews",
                arguments=("source",),
            )
        ctx.audio_base = folders[0].resolve()
        names = list(CHOI_REMOTES) + (list(WON_REMOTES) if ctx.split_scheme == "won2020" else [])
        for r in self.remotes:
            if r.filename in names:
                ctx.files[r.filename] = fetch_remote(self, r, ctx)

    def collect(self, ctx: PrepareContext) -> Collected:
        tags = read_resource_lines("msd", "top50_tags.txt")
        labels = choi_labels(ctx.files, tags)
        splits = split_of(ctx.split_scheme, ctx.files)
        base = ctx.audio_base or ctx.raw_dir
        found: dict[str, Path] = {}
        unnamed = 0
        for p in find_audio_files(base):
            msd_id = msd_id_of(p)
            if msd_id is None:
                unnamed += 1
            elif msd_id not in found:
                found[msd_id] = p
        candidates, excluded = [], []
        for msd_id, path in sorted(found.items()):
            rel = path.relative_to(base).as_posix()
            if msd_id not in splits:
                excluded.append({"id": msd_id, "path": rel, "reason": f"not in the {ctx.split_scheme} split"})
            elif msd_id not in labels:
                excluded.append({"id": msd_id, "path": rel, "reason": "no label row in Choi's *_y.npy"})
            else:
                candidates.append(Candidate(msd_id, rel, labels[msd_id], splits[msd_id]))
        listed = Counter(splits.values())
        present = Counter(c.split for c in candidates)
        for split in ("train", "valid", "test"):
            log.info("msd: %s: %d of the %d tracks of the split are present", split, present[split], listed[split])
        if unnamed:
            log.info("msd: %d audio files are not named by an MSD track id (TR + 16 characters): skipped", unnamed)
        return Collected(
            labels=tags,
            candidates=candidates,
            audio_root=str(base),
            excluded=excluded,
            extra={"present": dict(present), "split_sizes": dict(listed), "not_msd_named": unnamed},
        )
