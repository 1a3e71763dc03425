"""The musicnn 0.1.0 package's pretrained models (ISC license): their names, where the
package is, and what its files say, read without torch.

The package holds TensorFlow-1 checkpoints (``<MODEL>/.index`` +
``<MODEL>/.data-00000-of-00001``), the tag lists in ``configuration.py`` and the authors'
evaluation results in ``<MODEL>/experiment.result``. We read them as data — from an
installed package folder, an unpacked folder, or straight out of the downloaded wheel or
sdist — without importing musicnn or TensorFlow. Listing the models and finding an import
in the cache needs only this module; :mod:`audiocnn.pretrained.convert` turns the weights
into audiocnn checkpoints (and loads torch).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from audiocnn.errors import CheckpointError

MUSICNN_VERSION = "0.1.0"
MUSICNN_LICENSE = f"ISC (musicnn {MUSICNN_VERSION})"
INSTALL_HINT = f"pip install --no-deps musicnn=={MUSICNN_VERSION} && audiocnn pretrained import musicnn"
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # the largest file in the package is ~10 MB
#: part of every import's content key: raise it when audiocnn.pretrained.convert changes what it writes
IMPORT_REVISION = 1


@dataclass(frozen=True)
class MusicnnModel:
    """One pretrained model of the musicnn package and how it maps onto ours."""

    name: str  # our pretrained name
    folder: str  # model folder inside the musicnn package
    model: str  # our registry name
    labels_var: str  # tag list variable in configuration.py
    dataset: str
    description: str


MUSICNN_MODELS: dict[str, MusicnnModel] = {
    m.name: m
    for m in (
        MusicnnModel(
            "musicnn-mtt",
            "MTT_musicnn",
            "musicnn",
            "MTT_LABELS",
            "MagnaTagATune",
            "musicnn trained on MagnaTagATune, 50 tags (default model)",
        ),
        MusicnnModel(
            "vgg-mtt",
            "MTT_vgg",
            "vgg",
            "MTT_LABELS",
            "MagnaTagATune",
            "VGG baseline trained on MagnaTagATune, 50 tags",
        ),
        MusicnnModel(
            "musicnn-msd",
            "MSD_musicnn",
            "musicnn",
            "MSD_LABELS",
            "Million Song Dataset",
            "musicnn trained on the Million Song Dataset, 50 Last.fm tags",
        ),
        MusicnnModel(
            "vgg-msd",
            "MSD_vgg",
            "vgg",
            "MSD_LABELS",
            "Million Song Dataset",
            "VGG baseline trained on the Million Song Dataset, 50 Last.fm tags",
        ),
    )
}


# --------------------------------------------------------------------------- sources


class PackageSource:
    """Read-only view of the musicnn package's files, wherever they are.

    ``root`` may be an installed package folder, any folder containing one (an unpacked
    sdist), a wheel (``.whl``/``.zip``) or an sdist (``.tar.gz``/``.tgz``/``.tar``). Archive
    members are read in memory, never extracted.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._read: Callable[[str], bytes]
        if not self.root.exists():
            raise CheckpointError(
                f"{self.root}: no such file or folder",
                hint="`source` takes the musicnn package folder or its downloaded .whl/.tar.gz",
                arguments=("source",),
            )
        if self.root.is_dir():
            pkg = _package_dir_in(self.root)
            files = [p for p in pkg.rglob("*") if p.is_file()] if pkg is not None else []
            self.members = sorted(p.relative_to(self.root).as_posix() for p in files)
            self._read = lambda m: (self.root / m).read_bytes()
        elif zipfile.is_zipfile(self.root):
            zf = zipfile.ZipFile(self.root)
            self.members = sorted(i.filename for i in zf.infolist() if not i.is_dir())
            sizes = {i.filename: i.file_size for i in zf.infolist()}
            self._read = lambda m: self._checked(m, sizes[m], lambda: zf.read(m))
        else:
            try:
                tf = tarfile.open(self.root)
            except (tarfile.TarError, OSError) as exc:
                raise CheckpointError(
                    f"{self.root}: not a musicnn package folder, wheel or sdist ({exc})", hint=INSTALL_HINT
                ) from None
            infos = {i.name: i for i in tf.getmembers() if i.isfile()}
            self.members = sorted(infos)

            def read_tar(m: str) -> bytes:
                fh = tf.extractfile(infos[m])
                if fh is None:
                    raise CheckpointError(f"{self.root}: cannot read archive member {m}")
                return fh.read()

            self._read = lambda m: self._checked(m, infos[m].size, lambda: read_tar(m))

    def _checked(self, member: str, size: int, read: Callable[[], bytes]) -> bytes:
        if size > MAX_MEMBER_BYTES:
            raise CheckpointError(f"{self.root}: archive member {member} is implausibly large ({size} bytes)")
        try:
            return read()
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
            raise CheckpointError(f"{self.root}: cannot read {member} ({exc}); is the download complete?") from None

    def find(self, suffix: str) -> str | None:
        """The shallowest member whose path ends with ``suffix`` (package-relative)."""
        hits = [m for m in self.members if m == suffix or m.endswith("/" + suffix)]
        return min(hits, key=lambda m: (m.count("/"), m)) if hits else None

    def read(self, member: str) -> bytes:
        return self._read(member)

    def describe(self, member: str) -> str:
        return f"{self.root}/{member}" if self.root.is_dir() else f"{self.root}!{member}"


def _package_dir_in(folder: Path) -> Path | None:
    """The musicnn package folder at, or at most two levels below, ``folder``."""
    candidates = [folder, folder / "musicnn", *sorted(folder.glob("*/musicnn"))]
    for cand in candidates:
        if (cand / "configuration.py").is_file() and any((cand / m.folder).is_dir() for m in MUSICNN_MODELS.values()):
            return cand
    return None


def installed_package_dir() -> Path | None:
    """Folder of the installed ``musicnn`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("musicnn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def open_source(source: Path | str | None) -> PackageSource:
    """The given package path, or the installed package; a clear error when there is none."""
    if source is None:
        found = installed_package_dir()
        if found is None:
            raise CheckpointError("the musicnn package (pretrained weights) is not installed", hint=INSTALL_HINT)
        source = found
    src = PackageSource(Path(source))
    if src.find("configuration.py") is None or not any(src.find(f"{m.folder}/.index") for m in MUSICNN_MODELS.values()):
        raise CheckpointError(
            f"{src.root}: no musicnn models found (expected musicnn/configuration.py and MTT_musicnn/.index ...)",
            hint=INSTALL_HINT,
        )
    return src


def read_labels(src: PackageSource, var: str) -> list[str]:
    """A tag list from configuration.py, parsed as text (importing it would need TF-era deps)."""
    member = src.find("musicnn/configuration.py") or src.find("configuration.py")
    if member is None:
        raise CheckpointError(f"{src.root}: configuration.py with the tag lists not found")
    where = src.describe(member)
    try:
        tree = ast.parse(src.read(member).decode("utf-8"), filename=where)
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: cannot parse ({exc})") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == var for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                break
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return value
            break
    raise CheckpointError(f"{where}: no list of tag names {var} = [...]")


def read_reported_metrics(src: PackageSource, folder: str) -> dict[str, float]:
    """ROC-AUC / PR-AUC the authors recorded in ``<folder>/experiment.result`` (if shipped).

    Two layouts exist: ``ROC-AUC: x`` / ``PR-AUC: y`` lines, or two bare ``AUC: x`` lines
    (ROC first, then PR).
    """
    member = src.find(f"{folder}/experiment.result")
    if member is None:
        return {}
    text = src.read(member).decode("utf-8", errors="replace")
    num = r"([0-9]*\.[0-9]+)"
    roc = re.search(r"ROC-AUC:\s*" + num, text)
    pr = re.search(r"PR-AUC:\s*" + num, text)
    if roc:
        out = {"roc_auc": float(roc.group(1))}
        if pr:
            out["pr_auc"] = float(pr.group(1))
        return out
    bare = re.findall(r"(?<![-\w])AUC:\s*" + num, text)
    out = {}
    if bare:
        out["roc_auc"] = float(bare[0])
    if len(bare) > 1:
        out["pr_auc"] = float(bare[1])
    return out


def content_key(src: PackageSource, name: str) -> str:
    """12 hex digits naming what an import of ``name`` from ``src`` holds: the model's
    TensorFlow index (which carries a checksum of every weight tensor), the tag lists and
    :data:`IMPORT_REVISION`. The same weights give the same key wherever they come from
    (installed package, wheel, sdist); reading it costs a few kilobytes."""
    spec = MUSICNN_MODELS[name]
    h = hashlib.sha256(f"{name} {IMPORT_REVISION}".encode())
    for member in (src.find(f"{spec.folder}/.index"), src.find("configuration.py")):
        h.update(src.read(member) if member is not None else b"-")
    return h.hexdigest()[:12]


def import_file_name(name: str, key: str) -> str:
    """``<name>-<content key>.safetensors``: the file of one import in the cache."""
    return f"{name}-{key}.safetensors"
