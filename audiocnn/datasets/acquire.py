"""Getting a dataset's files: local source files or folders, a mirror, or the published
URL; each remote verified, archives extracted once.

A dataset published as files at URLs subclasses :class:`RemoteDataset`, whose
``acquire`` is :func:`acquire_remotes`; one with another way (``prepare folder``, MSD's
previews, MTG-Jamendo's per-tar fetches) subclasses :class:`~.spec.DatasetSpec` and uses
the helpers here (:func:`fetch_remote`, :func:`check_may_download`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from audiocnn.datasets.archives import extract_once
from audiocnn.datasets.checksums import verify_file
from audiocnn.datasets.http import download_file, is_url, mirror_url
from audiocnn.datasets.markers import read_marker, write_marker
from audiocnn.datasets.remotezip import fetch_members
from audiocnn.datasets.spec import DatasetSpec, PrepareContext, Remote
from audiocnn.datasets.splits import proportional_subset, stratum_keys
from audiocnn.errors import ChecksumError, DownloadError, UsageError, next_call
from audiocnn.progress import human_size

log = logging.getLogger("audiocnn.datasets")

#: A zip, or one part of a zip cut with ``split`` (``mp3.zip.001``).
_ZIP_NAME = re.compile(r"\.zip(\.\d+)?$")


def _local_candidates(sources: Sequence[str]) -> list[Path]:
    return [Path(s).expanduser() for s in sources if not is_url(s)]


def _find_local(filename: str, sources: Sequence[str]) -> Path | None:
    for p in _local_candidates(sources):
        if p.is_file() and p.name == filename:
            return p
        if p.is_dir() and (p / filename).is_file():
            return p / filename
        if p.is_file() and (p.parent / filename).is_file():
            return p.parent / filename
    return None


def _remote_url(remote: Remote, sources: Sequence[str], mirror: str | None) -> tuple[str, bool]:
    """URL to fetch ``remote`` from, and whether it is the registry's own URL."""
    for s in sources:
        if is_url(s):
            return mirror_url(s, remote.filename), False
    if mirror:
        return mirror_url(mirror, remote.filename), False
    return remote.url, True


def _check_sources(sources: Sequence[str]) -> None:
    for s in sources:
        if is_url(s):
            continue
        p = Path(s).expanduser()
        if not p.exists():
            raise UsageError(
                f"source={s}: no such file or folder",
                arguments=("source",),
                hint="give a local archive, a folder holding the archives, or an http(s) mirror URL",
            )


def acquire_remotes(spec: RemoteDataset, ctx: PrepareContext) -> None:
    """Locate or download every remote, verify it, extract archives once."""
    _check_sources(ctx.sources)
    local_dirs = [p for p in _local_candidates(ctx.sources) if p.is_dir()]
    archives = [r for r in spec.remotes if r.extract]
    # An already-extracted copy given as --source DIR is used in place.
    for d in local_dirs:
        if any(_find_local(r.filename, [str(d)]) for r in archives):
            continue
        layout = spec.locate_layout(d)
        if layout is not None:
            log.info("%s: using the extracted files in %s in place", spec.name, layout)
            ctx.audio_base = layout.resolve()
            for r in spec.remotes:
                if not r.extract:
                    ctx.files[r.filename] = _fetch_one(spec, r, ctx)
            if ctx.max_clips is not None:
                _select(spec, ctx)
            return

    groups: dict[str, list[Remote]] = defaultdict(list)
    for r in spec.remotes:
        if r.extract:
            groups[r.group or r.filename].append(r)
        else:
            ctx.files[r.filename] = _fetch_one(spec, r, ctx)

    for group, members in groups.items():
        members = sorted(members, key=lambda r: r.filename)
        located = [_find_local(r.filename, ctx.sources) or _downloaded(ctx, r) for r in members]
        if not all(located) and _by_members(spec, ctx, group, members):
            continue
        if ctx.max_clips is not None and group == spec.audio_group:
            _select(spec, ctx)
        _acquire_group(spec, ctx, group, members, located, len(groups))


def _acquire_group(
    spec: RemoteDataset, ctx: PrepareContext, group: str, members: list[Remote], located: list, n_groups: int
) -> None:
    """Fetch and verify a group's archive(s), then extract them once."""
    single_file = [p for p in _local_candidates(ctx.sources) if p.is_file()]
    key = f"extract-{group}"
    wanted = _wanted_members(spec, ctx, group)
    # Finished before with the same archives: nothing to fetch, verify or extract.
    done = read_marker(ctx.state_dir, key)
    if done is not None and not ctx.force and all(located):
        sig = done.get("signature", {})
        if (
            sig.get("archives") == [p.name for p in located]
            and sig.get("sizes") == [p.stat().st_size for p in located]
            and sig.get("members") == (sorted(wanted) if wanted is not None else None)
        ):
            log.info("%s: already extracted", group)
            return
    paths: list[Path] = []
    for r, loc in zip(members, located, strict=True):
        if (
            loc is None
            and n_groups == 1
            and len(members) == 1
            and len(single_file) == 1
            and single_file[0].name != r.filename
        ):
            # A differently named archive (e.g. a mirror's repackaging): usable, but
            # there is no published digest for it.
            loc = single_file[0]
            log.warning(
                "%s: not the published %s, so there is no checksum to verify it against; "
                "its clips are still decoded one by one",
                loc,
                r.filename,
            )
            paths.append(loc)
            continue
        paths.append(_fetch_one(spec, r, ctx, located=loc))
    extract_once(
        paths,
        ctx.raw_dir,
        ctx.state_dir,
        key=key,
        members=wanted,
        force=ctx.force,
        progress=ctx.progress,
        max_member=spec.max_member_size,
    )


def _wanted_members(spec: RemoteDataset, ctx: PrepareContext, group: str) -> list[str] | None:
    """The members to extract: the chosen clips' files of a partial prepare, else the spec's."""
    if ctx.selected is not None and group == spec.audio_group:
        return sorted(ctx.selected_paths)
    return spec.extract_members(group)


def _select(spec: DatasetSpec, ctx: PrepareContext) -> None:
    """Choose ``ctx.max_clips`` clips from the metadata alone (no audio yet), keeping each
    split's share and every label; sets ``ctx.selected`` and ``ctx.selected_paths``."""
    ctx.listing = True
    try:
        listed = spec.collect(ctx)
    finally:
        ctx.listing = False
    usable = [c for c in listed.candidates if c.id not in spec.always_exclude]
    keys = dict(stratum_keys({c.id: c.labels for c in usable}))
    chosen = set(proportional_subset([(c.id, c.split, keys[c.id]) for c in usable], ctx.max_clips or 0))
    ctx.selected = chosen
    ctx.listed = dict(Counter(c.split for c in usable))
    ctx.selected_paths = {c.path for c in usable if c.id in chosen}
    log.info(
        "%s: %d of %d listed clips chosen (max_clips=%d)",
        spec.name,
        len(chosen),
        len(usable),
        ctx.max_clips,
        extra={"arguments": ("max_clips",)},
    )


def _by_members(spec: RemoteDataset, ctx: PrepareContext, group: str, members: list[Remote]) -> bool:
    """Fetch a zip group member by member with HTTP Range when that is what is asked
    (``--max-clips``) or what was begun (completing a partial prepare); True if done so."""
    key = f"members-{group}"
    begun = read_marker(ctx.state_dir, key)
    if ctx.max_clips is None and begun is None:
        return False
    if spec.partial != "zip" or not all(_ZIP_NAME.search(r.filename) for r in members):
        return False
    if ctx.max_clips is None and begun.get("complete") and not ctx.force:
        log.info("%s: every member was fetched before", group)
        return True
    if ctx.max_clips is not None and group == spec.audio_group:
        _select(spec, ctx)
        wanted: list[str] | None = sorted(ctx.selected_paths)
    else:
        wanted = spec.extract_members(group)
    urls = [_remote_url(r, ctx.sources, ctx.mirror)[0] for r in members]
    complete = not (ctx.max_clips is not None and group == spec.audio_group)
    write_marker(ctx.state_dir, key, {"complete": False, "partial": not complete, "urls": urls})
    fetched, kept, stats = fetch_members(
        urls, ctx.raw_dir, wanted, progress=ctx.progress, max_member=spec.max_member_size
    )
    whole = stats.size
    log.info(
        "%s: %d members fetched, %d already here; %s received in %d requests (%.1f%% of the %s archive); "
        "each member checked against the CRC-32 of the zip's directory",
        group,
        fetched,
        kept,
        human_size(stats.bytes),
        stats.requests,
        100.0 * stats.bytes / max(1, whole),
        human_size(whole),
    )
    write_marker(ctx.state_dir, key, {"complete": complete, "partial": not complete, "urls": urls})
    return True


def _downloaded(ctx: PrepareContext, r: Remote) -> Path | None:
    p = ctx.downloads_dir / r.filename
    return p if p.is_file() else None


def fetch_remote(spec: DatasetSpec, r: Remote, ctx: PrepareContext, located: Path | None = None) -> Path:
    """One remote as a verified local file: found in --source, else downloaded (resumable)."""
    return _fetch_one(spec, r, ctx, located)


def check_may_download(ctx: PrepareContext, filename: str, url: str, what: str, approx_size: str = "") -> None:
    """A ``--source`` of local files holds all a dataset needs: a file missing there is
    said, not fetched from the Internet behind the user's back (``--download-missing``)."""
    local = _local_candidates(ctx.sources)
    if not local or ctx.download_missing or any(is_url(s) for s in ctx.sources):
        return
    where = ", ".join(str(p) for p in local)
    raise UsageError(
        f"source={where}: {filename} is not there ({what} needs it); nothing was downloaded",
        hint=f"put {filename} there, or add download_missing=True to fetch it from {url}"
        f"{f' ({approx_size})' if approx_size else ''}",
        arguments=("source", "download_missing"),
    )


def _fetch_one(spec: DatasetSpec, r: Remote, ctx: PrepareContext, located: Path | None = None) -> Path:
    local = located or _find_local(r.filename, ctx.sources)
    if local is not None and local.parent != ctx.downloads_dir:
        log.info("%s: using %s", r.filename, local)
        verify_file(local, r.checksum, r.algorithm, skip_checksum=ctx.skip_checksum, progress=ctx.progress)
        return local
    url, official = _remote_url(r, ctx.sources, ctx.mirror)
    dest = ctx.downloads_dir / r.filename
    if not dest.exists():
        if not spec.indexes_source:  # msd: --source is the previews; its lists are always fetched
            check_may_download(ctx, r.filename, url, spec.name, r.approx_size)
        log.info("downloading %s (%s)", url, r.approx_size or "size unknown")
    try:
        return download_file(
            url,
            dest,
            checksum=r.checksum,
            algorithm=r.algorithm,
            size=r.size,
            skip_checksum=ctx.skip_checksum,
            progress=ctx.progress,
        )
    except ChecksumError:
        raise
    except DownloadError as exc:
        if official and spec.unavailable_hint:
            raise DownloadError(
                f"{r.filename}: {exc.message}. {spec.unavailable_hint}",
                hint=f"`{next_call('prepare', spec.name, source=f'/path/to/{r.filename}')}`",
                arguments=("source",),
            ) from None
        raise


class RemoteDataset(DatasetSpec):
    """A dataset published as files at URLs (:attr:`remotes`): prepare finds them in the
    sources or downloads them, verifies them and extracts the archives once."""

    def acquire(self, ctx: PrepareContext) -> None:
        acquire_remotes(self, ctx)

    def locate_layout(self, folder: Path) -> Path | None:
        """The folder holding the extracted layout under ``folder``, if any: lets a source
        folder be an already-extracted copy."""
        return None

    def extract_members(self, group: str) -> list[str] | None:
        """The members of ``group``'s archive to extract (None: every one)."""
        return None
