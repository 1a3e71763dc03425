"""MTG-Jamendo (Bogdanov et al. 2019): 55,000 full Creative Commons tracks, multi-label tags.

Five datasets, one per published tag set: ``mtg-jamendo`` (every tag of ``autotagging.tsv``:
87 genre, 40 instrument and 56 mood/theme tags in the splits), ``mtg-jamendo-top50``,
``mtg-jamendo-genre``, ``mtg-jamendo-instrument`` and ``mtg-jamendo-moodtheme``.

Metadata: the split TSVs of the dataset's repository (``data/splits/split-N/<subset>-
{train,validation,test}.tsv``: ``TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS...``, one
tab-separated tag per column, ``genre---rock`` style) at the pinned commit of
``resources/mtg_jamendo/metadata.json``, each file checked against its pinned digest. The
splits partition each subset, and the README says a few tags were dropped so that every
split has the same tag list: the vocabulary is the tags of the chosen split scheme.
Split schemes ``split-0`` (default) .. ``split-4`` as published.

Audio: 100 tars ``raw_30s/<variant>/raw_30s_<variant>-NN.tar``, tar NN holding folder
``NN/`` (the first two characters of PATH), ``--variant audio`` (320 kbps MP3, 508 GB)
or ``audio-low`` (mono VBR ~V2, ``NN/<id>.low.mp3``, 156 GB). Each tar is checked against
``data/download/raw_30s_<variant>_sha256_tars.txt`` and every extracted track against
``..._sha256_tracks.txt``; a tar whose digest fails is fetched once more on its own, and
each finished tar has its own completion marker, so a run resumes tar by tar.

``--max-clips N`` fetches the fewest tars that hold N clips of the subset, chosen so that
each split keeps its share; the manifest holds every subset clip of those tars.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from audiocnn.constants import MULTI_LABEL
from audiocnn.datasets.acquire import check_may_download
from audiocnn.datasets.archives import extract_archive
from audiocnn.datasets.checksums import file_digest, verify_file
from audiocnn.datasets.http import download_file, is_url
from audiocnn.datasets.markers import read_marker, write_marker
from audiocnn.datasets.registry import register_dataset, resource_path
from audiocnn.datasets.spec import MISSING_FROM_ARCHIVE, Candidate, Collected, DatasetSpec, PrepareContext
from audiocnn.errors import ChecksumError, DatasetError, UsageError

log = logging.getLogger("audiocnn.datasets")

#: Pinned metadata: repository, commit and a digest per file (see the file's note).
PINNED: dict[str, Any] = json.loads(resource_path("mtg_jamendo", "metadata.json").read_text(encoding="utf-8"))
METADATA_BASE = f"https://raw.githubusercontent.com/MTG/mtg-jamendo-dataset/{PINNED['commit']}/"
#: The "mtg-fast" host of the dataset's own download script (scripts/download/download.py);
#: the slower original is https://essentia.upf.edu/documentation/datasets/mtg-jamendo/.
AUDIO_BASE = "https://cdn.freesound.org/mtg-jamendo/"
VARIANTS = ("audio", "audio-low")
SPLIT_FILES = (("train", "train"), ("valid", "validation"), ("test", "test"))
SCHEMES = tuple(f"split-{i}" for i in range(5))


def pinned_digest(relpath: str) -> tuple[str, str]:
    """(digest, algorithm) pinned for a metadata file of the repository."""
    entry = PINNED["files"].get(relpath)
    if entry is None:
        raise DatasetError(f"{relpath}: no pinned digest in resources/mtg_jamendo/metadata.json")
    if "sha256" in entry:
        return entry["sha256"], "sha256"
    return entry["git_blob_sha1"], "git-blob-sha1"


def _local_dirs(ctx: PrepareContext) -> list[Path]:
    return [Path(s).expanduser() for s in ctx.sources if not is_url(s) and Path(s).expanduser().is_dir()]


def _url(ctx: PrepareContext, relpath: str, official: str) -> str:
    for s in ctx.sources:
        if is_url(s):
            return s.rstrip("/") + "/" + relpath
    if ctx.mirror:
        return ctx.mirror.rstrip("/") + "/" + relpath
    return official + relpath


def fetch(ctx: PrepareContext, relpath: str, digest: str, algorithm: str, official: str) -> Path:
    """A verified local copy of ``relpath``: from a --source folder (the upstream path, or
    the bare file name as the download script leaves it), else downloaded (resumable) from
    the --source URL, the mirror or the official host. A downloaded file whose digest
    fails is fetched once more before giving up."""
    # A bare name is unambiguous for tars and the sha256 lists only (every split-N folder
    # holds files of the same names).
    flat = relpath.startswith(("raw_30s/", "data/download/"))
    for d in _local_dirs(ctx):
        for p in (d / relpath, d / Path(relpath).name) if flat else (d / relpath,):
            if p.is_file():
                verify_file(p, digest, algorithm, skip_checksum=ctx.skip_checksum, progress=ctx.progress)
                return p
    dest = ctx.downloads_dir / relpath
    url = _url(ctx, relpath, official)
    if not dest.exists():
        check_may_download(ctx, relpath, url, ctx.name)
    kw = dict(
        checksum=digest,
        algorithm=algorithm,
        skip_checksum=ctx.skip_checksum,
        progress=ctx.progress,
    )
    try:
        return download_file(url, dest, **kw)
    except ChecksumError:
        log.warning("%s: digest does not match; fetching it once more", relpath)
        dest.unlink(missing_ok=True)
    return download_file(url, dest, **kw)


def read_split_tsv(path: Path) -> list[tuple[str, str, list[str]]]:
    """(track id, PATH, tags) of each row; the TAGS column and every column after it are tags."""
    rows = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header or header[:4] != ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH"] or header[-1] != "TAGS":
            raise DatasetError(f"{path}: expected the columns TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 6 or "/" not in row[3]:
                raise DatasetError(f"{path}:{lineno}: expected a track id, a PATH NN/<id>.mp3 and at least one tag")
            rows.append((row[0], row[3], [t for t in row[5:] if t]))
    return rows


def read_sha256_list(path: Path) -> dict[str, str]:
    """``<sha256> <name>`` lines (the dataset's *_sha256_tars.txt / *_sha256_tracks.txt) -> name: digest."""
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, _sp, name = line.strip().partition(" ")
        if len(digest) != 64 or not name:
            raise DatasetError(f"{path}:{lineno}: expected '<sha256> <file name>'")
        out[name.strip()] = digest.lower()
    return out


def audio_path(path: str, variant: str) -> str:
    """PATH of the TSVs (``15/215.mp3``) as the variant's tar holds it (``15/215.low.mp3``)."""
    return path[: -len(".mp3")] + ".low.mp3" if variant == "audio-low" else path


def tar_name(path: str, variant: str) -> str:
    return f"raw_30s_{variant}-{path.split('/', 1)[0]}.tar"


def choose_tars(per_tar: dict[str, Counter], n: int) -> list[str]:
    """The fewest tars holding ``n`` clips, chosen one by one to keep each split's share.

    ``per_tar``: tar -> clips per split. The count k is what the k largest tars reach; each
    pick is the tar that brings the split proportions closest to the whole's while the
    remaining picks can still reach ``n``.
    """
    sizes = {t: sum(c.values()) for t, c in per_tar.items()}
    order = sorted(sizes, key=lambda t: (-sizes[t], t))
    k, acc = 0, 0
    while k < len(order) and acc < n:
        acc += sizes[order[k]]
        k += 1
    whole = sum((c for c in per_tar.values()), Counter())
    total = sum(whole.values()) or 1
    target = {s: whole[s] / total for s in whole}
    chosen: list[str] = []
    have: Counter = Counter()
    for step in range(k):
        left = k - step - 1
        best: tuple[float, int, str] | None = None
        for t in order:
            if t in chosen:
                continue
            rest = sorted((sizes[r] for r in order if r not in chosen and r != t), reverse=True)[:left]
            if sum(have.values()) + sizes[t] + sum(rest) < min(n, sum(sizes.values())):
                continue
            mix = have + per_tar[t]
            m = sum(mix.values()) or 1
            score = sum(abs(mix[s] / m - target[s]) for s in target)
            key = (round(score, 9), -sizes[t], t)
            if best is None or key < best:
                best = key
        if best is None:
            break
        chosen.append(best[2])
        have += per_tar[best[2]]
    return sorted(chosen)


class _MTGJamendo(DatasetSpec):
    subset: str
    task = MULTI_LABEL
    split_schemes = SCHEMES
    default_split_scheme = "split-0"
    variants = VARIANTS
    partial = "custom"
    max_member_size = 16 << 20  # 30-s MP3 clips of about 1 MB
    license = (
        "Metadata CC BY-NC-SA 4.0; audio under the Creative Commons license of each track "
        "(audio_licenses.txt of the dataset's repository)"
    )
    license_short = "CC BY-NC-SA 4.0 + per-track CC"
    citation = (
        'D. Bogdanov, M. Won, P. Tovstogan, A. Porter and X. Serra, "The MTG-Jamendo Dataset for '
        'Automatic Music Tagging", Machine Learning for Music Discovery Workshop, ICML 2019.'
    )
    homepage = "https://mtg.github.io/mtg-jamendo-dataset/"
    approx_size = "508 GB (low: 156)"

    # -- metadata ----------------------------------------------------------------------
    def split_paths(self, scheme: str) -> list[tuple[str, str]]:
        return [(split, f"data/splits/{scheme}/{self.subset}-{name}.tsv") for split, name in SPLIT_FILES]

    def _metadata(self, ctx: PrepareContext) -> None:
        variant = ctx.variant or VARIANTS[0]
        wanted = [rel for _s, rel in self.split_paths(ctx.split_scheme)] + [
            f"data/download/raw_30s_{variant}_sha256_tars.txt",
            f"data/download/raw_30s_{variant}_sha256_tracks.txt",
        ]
        for rel in wanted:
            if rel not in ctx.files:
                ctx.files[rel] = fetch(ctx, rel, *pinned_digest(rel), official=METADATA_BASE)

    def rows(self, ctx: PrepareContext) -> list[tuple[str, str, list[str], str]]:
        """(track id, PATH, tags, split) over the scheme's three split files."""
        out = []
        seen: dict[str, str] = {}
        for split, rel in self.split_paths(ctx.split_scheme):
            for tid, path, tags in read_split_tsv(ctx.files[rel]):
                if tid in seen:
                    raise DatasetError(f"{ctx.files[rel]}: {tid} is also in the {seen[tid]} split")
                seen[tid] = split
                out.append((tid, path, tags, split))
        return out

    # -- audio -------------------------------------------------------------------------
    def acquire(self, ctx: PrepareContext) -> None:
        if ctx.sources:
            for s in ctx.sources:
                if not is_url(s) and not Path(s).expanduser().is_dir():
                    raise UsageError(
                        f"source={s}: not a folder or URL",
                        arguments=("source",),
                        hint="give a mirror holding data/ and raw_30s/<variant>/ (a folder or an http(s) URL)",
                    )
        self._metadata(ctx)
        variant = ctx.variant or VARIANTS[0]
        tars_sha = read_sha256_list(ctx.files[f"data/download/raw_30s_{variant}_sha256_tars.txt"])
        tracks_sha = read_sha256_list(ctx.files[f"data/download/raw_30s_{variant}_sha256_tracks.txt"])
        members: dict[str, list[str]] = defaultdict(list)
        per_tar: dict[str, Counter] = defaultdict(Counter)
        tar_of: dict[str, str] = {}
        for tid, path, _tags, split in self.rows(ctx):
            t = tar_name(path, variant)
            members[t].append(audio_path(path, variant))
            per_tar[t][split] += 1
            tar_of[tid] = t
        tars = sorted(members) if ctx.max_clips is None else choose_tars(per_tar, ctx.max_clips)
        if ctx.max_clips is not None:
            chosen = set(tars)
            ctx.listed = dict(sum(per_tar.values(), Counter()))
            ctx.selected = {tid for tid, t in tar_of.items() if t in chosen}
            log.info(
                "%s: %d of %d tars hold %d clips for max_clips=%d",
                self.name,
                len(tars),
                len(members),
                len(ctx.selected),
                ctx.max_clips,
                extra={"arguments": ("max_clips",)},
            )
        for i, t in enumerate(tars, 1):
            if t not in tars_sha:
                raise DatasetError(f"{t}: not in raw_30s_{variant}_sha256_tars.txt; the metadata does not match")
            log.info("%s: tar %d of %d: %s", self.name, i, len(tars), t)
            self._one_tar(ctx, t, tars_sha[t], sorted(members[t]), tracks_sha)

    def _one_tar(self, ctx: PrepareContext, tar: str, digest: str, names: list[str], tracks_sha) -> None:
        """Fetch, verify, extract one tar and check its tracks; a marker makes it a no-op next time."""
        key = f"tar-{tar}"
        done = read_marker(ctx.state_dir, key)
        if done and not ctx.force and done.get("sha256") == digest and set(names) <= set(done.get("tracks", [])):
            return
        rel = f"raw_30s/{ctx.variant}/{tar}"
        for attempt in (1, 2):
            path = fetch(ctx, rel, digest, "sha256", official=AUDIO_BASE)
            extract_archive(path, ctx.raw_dir, members=names, progress=ctx.progress, max_member=self.max_member_size)
            bad = self._bad_tracks(ctx, names, tracks_sha)
            if not bad:
                break
            if attempt == 2 or path.parent != (ctx.downloads_dir / rel).parent:
                raise ChecksumError(
                    f"{ctx.raw_dir / bad[0]}: sha256 differs from raw_30s_{ctx.variant}_sha256_tracks.txt "
                    f"({len(bad)} tracks of {tar})",
                    hint=f"delete {path} and run the same command again",
                )
            log.warning("%s: %d extracted tracks fail their sha256; fetching the tar again", tar, len(bad))
            path.unlink()
        write_marker(ctx.state_dir, key, {"sha256": digest, "tracks": names, "finished": time.time()})

    def _bad_tracks(self, ctx: PrepareContext, names: list[str], tracks_sha: dict[str, str]) -> list[str]:
        if ctx.skip_checksum:
            return []
        bad = []
        for name in names:
            p = ctx.raw_dir / name
            expected = tracks_sha.get(name)
            if not p.is_file():
                continue  # listed in the split but not in the tar: excluded when collecting
            if expected is None or file_digest(p, "sha256") != expected:
                bad.append(name)
        return bad

    def collect(self, ctx: PrepareContext) -> Collected:
        variant = ctx.variant or VARIANTS[0]
        rows = self.rows(ctx)
        labels = sorted({t for _i, _p, tags, _s in rows for t in tags})
        candidates, excluded = [], []
        for tid, path, tags, split in rows:
            rel = audio_path(path, variant)
            if not ctx.listing and not (ctx.raw_dir / rel).is_file():
                excluded.append({"id": tid, "path": rel, "reason": MISSING_FROM_ARCHIVE})
                continue
            candidates.append(Candidate(tid, rel, tags, split))
        return Collected(
            labels=labels,
            candidates=candidates,
            excluded=excluded,
            extra={"subset": self.subset, "variant": variant, "metadata_commit": PINNED["commit"]},
        )


def _make(name: str, subset: str, classes: int, title: str) -> type[_MTGJamendo]:
    attrs = {"name": name, "subset": subset, "title": title, "classes": classes, "__doc__": f"MTG-Jamendo {subset}."}
    return register_dataset(type(f"MTGJamendo_{subset}", (_MTGJamendo,), attrs))


MTGJamendoAll = _make("mtg-jamendo", "autotagging", 183, "MTG-Jamendo: 55,525 tracks, all 183 tags")
MTGJamendoTop50 = _make("mtg-jamendo-top50", "autotagging_top50tags", 50, "MTG-Jamendo top-50 tags")
MTGJamendoGenre = _make("mtg-jamendo-genre", "autotagging_genre", 87, "MTG-Jamendo genre tags")
MTGJamendoInstrument = _make("mtg-jamendo-instrument", "autotagging_instrument", 40, "MTG-Jamendo instrument tags")
MTGJamendoMoodTheme = _make("mtg-jamendo-moodtheme", "autotagging_moodtheme", 56, "MTG-Jamendo mood/theme tags")
