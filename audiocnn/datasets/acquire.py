"""Getting a dataset's files: local ``--source`` files or folders, a mirror, or the
published URL; each remote verified, archives extracted once.

Below the registry: a :class:`~audiocnn.datasets.registry.DatasetSpec` acquires its
remotes with :func:`acquire_remotes` unless it has another way (``prepare folder``).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from audiocnn.datasets.download import (
    Remote,
    download_file,
    extract_once,
    is_url,
    mirror_url,
    read_marker,
    verify_file,
)
from audiocnn.errors import ChecksumError, DownloadError, UsageError

if TYPE_CHECKING:  # annotations only: the registry imports this module
    from audiocnn.datasets.registry import DatasetSpec, PrepareContext

log = logging.getLogger("audiocnn.datasets")


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
                f"--source {s}: no such file or folder",
                hint="give a local archive, a folder holding the archives, or an http(s) mirror URL",
            )


def acquire_remotes(spec: DatasetSpec, ctx: PrepareContext) -> None:
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
            return

    groups: dict[str, list[Remote]] = defaultdict(list)
    for r in spec.remotes:
        if r.extract:
            groups[r.group or r.filename].append(r)
        else:
            ctx.files[r.filename] = _fetch_one(spec, r, ctx)

    single_file = [p for p in _local_candidates(ctx.sources) if p.is_file()]
    for group, members in groups.items():
        members = sorted(members, key=lambda r: r.filename)
        key = f"extract-{group}"
        # Finished before with the same archives: nothing to fetch, verify or extract.
        located = [_find_local(r.filename, ctx.sources) or _downloaded(ctx, r) for r in members]
        done = read_marker(ctx.state_dir, key)
        if done is not None and not ctx.force and all(located):
            sig = done.get("signature", {})
            if sig.get("archives") == [p.name for p in located] and sig.get("sizes") == [
                p.stat().st_size for p in located
            ]:
                log.info("%s: already extracted", group)
                continue
        paths: list[Path] = []
        for r, loc in zip(members, located, strict=True):
            if (
                loc is None
                and len(groups) == 1
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
            members=spec_members(spec, group),
            force=ctx.force,
            progress=ctx.progress,
        )


def spec_members(spec: DatasetSpec, group: str) -> list[str] | None:
    fn = getattr(spec, "extract_members", None)
    return fn(group) if fn else None


def _downloaded(ctx: PrepareContext, r: Remote) -> Path | None:
    p = ctx.downloads_dir / r.filename
    return p if p.is_file() else None


def _fetch_one(spec: DatasetSpec, r: Remote, ctx: PrepareContext, located: Path | None = None) -> Path:
    local = located or _find_local(r.filename, ctx.sources)
    if local is not None and local.parent != ctx.downloads_dir:
        log.info("%s: using %s", r.filename, local)
        verify_file(local, r.checksum, r.algorithm, skip_checksum=ctx.skip_checksum, progress=ctx.progress)
        return local
    url, official = _remote_url(r, ctx.sources, ctx.mirror)
    dest = ctx.downloads_dir / r.filename
    if not dest.exists():
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
            backoff=float(os.environ.get("AUDIOCNN_DOWNLOAD_BACKOFF", "1.0")),
            retries=int(os.environ.get("AUDIOCNN_DOWNLOAD_RETRIES", "5")),
        )
    except ChecksumError:
        raise
    except DownloadError as exc:
        if official and spec.unavailable_hint:
            raise DownloadError(
                f"{r.filename}: {exc.message}. {spec.unavailable_hint}",
                hint=f"audiocnn prepare {spec.name} --source /path/to/{r.filename}",
            ) from None
        raise
