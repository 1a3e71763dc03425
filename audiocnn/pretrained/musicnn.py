"""Import the four pretrained models shipped in the ``musicnn`` 0.1.0 package (ISC license).

The package holds TensorFlow-1 checkpoints (``<MODEL>/.index`` +
``<MODEL>/.data-00000-of-00001``), the tag lists in ``configuration.py`` and the authors'
evaluation results in ``<MODEL>/experiment.result``. We read them as data — from an
installed package folder, an unpacked folder, or straight out of the downloaded wheel or
sdist — without importing musicnn or TensorFlow, map the variables onto our ``musicnn``
and ``vgg`` models and write ordinary audiocnn checkpoints.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import logging
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from audiocnn.constants import MULTI_LABEL
from audiocnn.errors import CheckpointError
from audiocnn.models.checkpoint import model_metadata, save_checkpoint
from audiocnn.models.registry import create_model
from audiocnn.pretrained.tf_bundle import TensorBundle

log = logging.getLogger(__name__)

MUSICNN_VERSION = "0.1.0"
MUSICNN_LICENSE = f"ISC (musicnn {MUSICNN_VERSION})"
INSTALL_HINT = f"pip install --no-deps musicnn=={MUSICNN_VERSION} && audiocnn pretrained import musicnn"
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # the largest file in the package is ~10 MB
#: part of every import's content key: raise it when the conversion below changes what it writes
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


def read_bundle(src: PackageSource, folder: str) -> TensorBundle:
    index = src.find(f"{folder}/.index")
    if index is None:
        raise CheckpointError(f"{src.root}: model folder {folder}/ with a .index file not found")
    prefix = index[: -len(".index")]
    bundle = TensorBundle(src.read(index), {}, src.describe(prefix))
    n = bundle.header.num_shards
    shards = {}
    for i in range(n):
        member = f"{prefix}.data-{i:05d}-of-{n:05d}"
        if member not in src.members:
            raise CheckpointError(f"{src.describe(member)}: checkpoint data file is missing")
        shards[i] = src.read(member)
    bundle._shards = shards
    return bundle


# --------------------------------------------------------------------------- mapping


def _conv2d(k: np.ndarray) -> np.ndarray:
    return k.transpose(3, 2, 0, 1)  # TF HWIO -> torch OIHW


def _conv1d_from_full_width(k: np.ndarray) -> np.ndarray:
    # musicnn's mid-end conv is a 2-D conv whose kernel spans all channels laid out as
    # width with one input channel: (time, channels, 1, out) -> Conv1d (out, channels, time).
    return k[:, :, 0, :].transpose(2, 1, 0)


def _dense(k: np.ndarray) -> np.ndarray:
    return k.T


def _bn(tf_name: str, ours: str) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray] | None]]:
    return [
        (f"{tf_name}/gamma", f"{ours}.weight", None),
        (f"{tf_name}/beta", f"{ours}.bias", None),
        (f"{tf_name}/moving_mean", f"{ours}.running_mean", None),
        (f"{tf_name}/moving_variance", f"{ours}.running_var", None),
    ]


def _layer(tf_name: str, ours: str, fn) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray] | None]]:
    return [(f"{tf_name}/kernel", f"{ours}.weight", fn), (f"{tf_name}/bias", f"{ours}.bias", None)]


def _numbered(base: str, i: int) -> str:
    return base if i == 0 else f"{base}_{i}"


def variable_map(model) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray] | None]]:
    """``(tf variable, our state-dict key, transform)`` for a musicnn or vgg model.

    TF-1 layers are named by creation order (``conv2d``, ``conv2d_1``, ...,
    ``batch_normalization_N``), so the map follows the order musicnn's code builds them.
    """
    pairs = []
    if model.registry_name == "musicnn":
        convs = [f"timbral.{i}" for i in range(len(model.timbral))]
        convs += [f"temporal.{i}" for i in range(len(model.temporal))]
        bn = 0
        pairs += _bn(_numbered("batch_normalization", bn), "bn_input")
        for i, ours in enumerate(convs):
            pairs += _layer(_numbered("conv2d", i), f"{ours}.conv", _conv2d)
            bn += 1
            pairs += _bn(_numbered("batch_normalization", bn), f"{ours}.bn")
        for j in range(len(model.midend)):
            pairs += _layer(_numbered("conv2d", len(convs) + j), f"midend.{j}.conv", _conv1d_from_full_width)
            bn += 1
            pairs += _bn(_numbered("batch_normalization", bn), f"midend.{j}.bn")
        pairs += _bn(_numbered("batch_normalization", bn + 1), "bn_pool")
        pairs += _layer("dense", "dense", _dense)
        pairs += _bn(_numbered("batch_normalization", bn + 2), "bn_dense")
        pairs += _layer("dense_1", "head.1", _dense)
        return pairs
    if model.registry_name == "vgg":
        pairs += _bn("batch_normalization", "bn_input")
        for i in range(len(model.blocks)):
            pairs += _layer(f"{i + 1}CNN", f"blocks.{i}.conv", _conv2d)
            pairs += _bn(f"batch_normalization_{i + 1}", f"blocks.{i}.bn")
        pairs += _layer("dense", "head.1", _dense)
        return pairs
    raise CheckpointError(f"no TensorFlow variable map for model {model.registry_name!r}")


def load_tf_weights(model, bundle: TensorBundle) -> None:
    """Copy every mapped TF variable into ``model``; shapes must match exactly."""
    state = model.state_dict()
    mapping = variable_map(model)
    covered = set()
    new_state = {}
    for tf_name, key, fn in mapping:
        if tf_name not in bundle:
            raise CheckpointError(f"{bundle.source}.index: variable {tf_name!r} (for {key}) not in checkpoint")
        value = bundle.read(tf_name)
        value = fn(value) if fn is not None else value
        if key not in state:
            raise CheckpointError(f"internal: model has no parameter {key}")
        if tuple(value.shape) != tuple(state[key].shape):
            raise CheckpointError(
                f"{bundle.source}.index: variable {tf_name!r} has shape {tuple(value.shape)}, "
                f"{key} needs {tuple(state[key].shape)}"
            )
        new_state[key] = torch.from_numpy(np.ascontiguousarray(value)).to(state[key].dtype)
        covered.add(key)
    missing = [k for k in state if k not in covered and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{bundle.source}: no TF variable for {missing[:5]}")
    model.load_state_dict(new_state, strict=False)


def build_pretrained(src: PackageSource, name: str):
    """``(model, labels, metrics)`` for pretrained ``name`` read from ``src``, in eval mode."""
    spec = MUSICNN_MODELS[name]
    labels = read_labels(src, spec.labels_var)
    bundle = read_bundle(src, spec.folder)
    model = create_model(spec.model, num_classes=len(labels), task=MULTI_LABEL)
    load_tf_weights(model, bundle)
    model.eval()
    return model, labels, read_reported_metrics(src, spec.folder)


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


def import_models(src: PackageSource, out_dir: Path, names: list[str]) -> list[Path]:
    """Convert ``names`` from ``src`` into ``<out_dir>/<name>-<content key>.safetensors``."""
    paths = []
    for name in names:
        spec = MUSICNN_MODELS[name]
        key = content_key(src, name)
        model, labels, metrics = build_pretrained(src, name)
        meta = model_metadata(
            model,
            labels,
            metrics=metrics,
            source=f"musicnn {MUSICNN_VERSION} {spec.folder} (imported from {src.root})",
            license=MUSICNN_LICENSE,
            pretrained=name,
            dataset=spec.dataset,
            description=spec.description,
        )
        path = save_checkpoint(Path(out_dir) / import_file_name(name, key), model, meta)
        log.debug("wrote %s", path)
        paths.append(path)
    return paths
