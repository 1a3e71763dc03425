"""README.md and docs/*.md stay true.

- README opens with the two commands CI runs, fits in 250 lines, and its links and the
  docs' links point at files and headings that exist.
- Every `audiocnn ...` command they show (a line of a fenced block, or an inline code
  span) names a real command and options that command accepts.
- Every command shown in a fenced block runs here, offline; or another test runs it as it
  is (RUN_ELSEWHERE, which names the test and checks its source still holds the command);
  or it is listed in EXCUSED with the reason it cannot run offline (a real download) and
  the test that runs the same code against fixtures on 127.0.0.1. A command added to the
  docs fails `test_every_shown_command_runs_or_is_excused` until it is one of these.
- Every output quoted from `audiocnn tag examples/chorale.flac` equals what it prints.

How the commands run, cheaply: each walk below is one test that sets up a sandbox and runs
the commands of its part in the order the docs show them, in-process
(`audiocnn.cli.main.run`). The sandbox's working folder links `configs/` and `examples/`
from the repository and holds the files the commands name (`song.mp3`, `my_music/`,
`labels.csv`, `new-clip.wav`); its HOME holds `~/Downloads/genres.tar.gz` (the GTZAN-layout
fixture archive of audiocnn/testing/datasets.py), `~/music`, `~/clips` and `~/Music` (short
synthetic audio); every sandbox shares the session's model cache (`AUDIOCNN_CACHE_DIR`, set
in tests/conftest.py), so musicnn's models are imported once per session. A command is
changed in these ways only (`_argv`): `~` is expanded; a run folder named by its time (`runs/NAME-<timestamp>`,
`runs/NAME-20260101-120000`) is the folder `train` made; `/tmp/six` is a sandbox folder;
and `train` gets SMOKE appended (one step of one epoch, one validation chunk), because the
shipped configs train for hours: the command still loads its config, builds its model,
extracts its features, trains, validates and writes the run folder `evaluate`, `tag` and
`export` then read.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from audiocnn.cli.main import run
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.testing.datasets import gtzan_fixture, mtat_fixture, no_slow_retries, patch_remotes

ROOT = Path(__file__).resolve().parents[1]
NO_MUSICNN = importlib.util.find_spec("musicnn") is None
needs_musicnn = pytest.mark.skipif(NO_MUSICNN, reason="musicnn is not installed (pip install --no-deps musicnn==0.1.0)")
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
PAGES = ["datasets", "features", "models", "training", "tagging", "benchmarks", "architecture", "reliability"]
GLOBAL_OPTIONS = {"--help", "--version", "--data-dir", "--verbose"}
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", flags=re.S | re.M)


def _text(doc: str) -> str:
    return (ROOT / doc).read_text(encoding="utf-8")


def _shown(doc: str) -> list[str]:
    """The `audiocnn ...` lines of a page's fenced blocks, without their `# comment`."""
    lines = []
    for block in FENCE.findall(_text(doc)):
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("audiocnn "):
                lines.append(line)
    return lines


def _inline(doc: str) -> list[str]:
    """`audiocnn ...` commands in a page's inline code spans (`a && b` gives both)."""
    prose = FENCE.sub("", _text(doc))
    spans = re.findall(r"`(audiocnn [^`]+)`", prose)
    return [part.strip() for span in spans for part in span.split("&&") if part.strip().startswith("audiocnn ")]


SHOWN = list(dict.fromkeys(line for doc in DOCS for line in _shown(doc)))
MENTIONED = list(dict.fromkeys(line for doc in DOCS for line in _shown(doc) + _inline(doc)))


# --------------------------------------------------------------------------- what runs, what does not

SMOKE = [
    *("--set", "epochs=1", "--set", "max_steps_per_epoch=1", "--set", "batch_size=2"),
    *("--set", "eval_chunks=1", "--set", "eval_batch_size=2", "--set", "bn_stats_batches=1"),
    *("--set", "embedding_chunks=1", "--set", "workers=0", "--set", "tensorboard=false"),
]

_FIXTURES = "runs against fixtures on 127.0.0.1 in"
EXCUSED = {
    "audiocnn tag PATH... [--model NAME|CHECKPOINT|RUN_DIR] [--top-k K] [--format table|json|csv]": (
        "the synopsis of tag, not a command; its options are checked by test_command_and_options_exist"
    ),
    "audiocnn prepare mtat": f"downloads 2.7 GB from mirg.city.ac.uk; {_FIXTURES} test_datasets.py "
    "(and here its fixture is prepared from a folder for the MTAT walk)",
    "audiocnn prepare mtg-jamendo-top50": f"downloads 508 GB from cdn.freesound.org; {_FIXTURES} test_mtg_jamendo.py",
    "audiocnn prepare mtg-jamendo-moodtheme --variant audio-low --split-scheme split-3": (
        f"downloads 156 GB from cdn.freesound.org; {_FIXTURES} test_mtg_jamendo.py (audio-low, split-1)"
    ),
    "audiocnn prepare mtg-jamendo-top50 --max-clips 2000": f"downloads its tars; {_FIXTURES} test_mtg_jamendo.py",
    "audiocnn prepare msd --source ~/msd-previews": (
        f"downloads the split lists from GitHub and needs your MSD previews; {_FIXTURES} test_msd.py"
    ),
    "audiocnn prepare msd --source ~/msd-previews --split-scheme choi2017": (
        f"downloads the split lists from GitHub and needs your MSD previews; {_FIXTURES} test_msd.py"
    ),
    "audiocnn prepare fma-large --max-clips 5000": f"downloads parts of a 93 GiB zip; {_FIXTURES} test_partial.py",
    "audiocnn prepare fma-large": f"downloads a 93 GiB zip; {_FIXTURES} test_datasets.py (fma-small)",
}


@dataclass
class Sandbox:
    root: Path
    home: Path
    cwd: Path
    data: Path


def _argv(box: Sandbox, line: str) -> list[str]:
    """A shown command as this sandbox runs it: the normalisations listed in the docstring."""
    line = line.replace("/tmp/six", str(box.root / "six"))
    words = [str(box.home) + w[1:] if w.startswith("~/") else w for w in shlex.split(line)[1:]]
    out = []
    for w in words:
        m = re.match(r"runs/(.+?)-(?:<timestamp>|\d{8}-\d{6})(/.*)?$", w)
        if m:
            made = sorted((box.cwd / "runs").glob(f"{m.group(1)}-*"), key=lambda p: p.stat().st_mtime)
            assert made, f"`{line}` names a run of {m.group(1)}, but no earlier command made one"
            w = str(made[-1].relative_to(box.cwd)) + (m.group(2) or "")
        out.append(w)
    return out + SMOKE if out[0] == "train" else out


def _run(box: Sandbox, capsys, line: str) -> tuple[str, str]:
    code = run(_argv(box, line))
    out, err = capsys.readouterr()
    assert code == 0, f"`{line}` exited {code}: {err.strip()[-2000:]}"
    return out, err


@pytest.fixture(scope="session")
def shared_xdg_cache(tmp_path_factory) -> Path:
    """One XDG cache folder for every sandbox (audiocnn's own cache is the session's)."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture()
def box(tmp_path, monkeypatch, shared_xdg_cache) -> Sandbox:
    home, cwd = tmp_path / "home", tmp_path / "work"
    data = cwd / "data"
    data.mkdir(parents=True)
    home.mkdir()
    for name in ("configs", "examples"):
        (cwd / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_xdg_cache))
    monkeypatch.setenv("AUDIOCNN_DATA_DIR", str(data))
    monkeypatch.delenv("AUDIOCNN_MIRROR", raising=False)
    monkeypatch.chdir(cwd)
    no_slow_retries(monkeypatch)
    return Sandbox(tmp_path, home, cwd, data)


def _labelled_folder(root: Path, *, per_label: int = 4, seconds: float = 1.0) -> list[str]:
    """Sub-folders as labels: two labels of `per_label` short clips each."""
    paths = []
    for k, (label, freqs) in enumerate((("low", (110.0, 165.0)), ("high", (1760.0, 2640.0)))):
        for i in range(per_label):
            rel = f"{label}/{label}{i}.wav"
            write_audio(root / rel, synth_tone(seconds, 16000, freqs=freqs, seed=10 * k + i), 16000)
            paths.append(rel)
    return paths


def _songs(folder: Path, n: int = 2, seconds: float = 4.0) -> None:
    for i in range(n):
        write_audio(folder / f"song{i}.wav", synth_tone(seconds, 16000, seed=i), 16000)


# --------------------------------------------------------------------------- the walks

WALKS: dict[str, list[str]] = {
    "listing": [
        "audiocnn --help",
        "audiocnn --version",
        "audiocnn datasets",
        "audiocnn pretrained list",
    ],
    "gtzan": [
        "audiocnn prepare gtzan --source ~/Downloads/genres.tar.gz",
        "audiocnn info gtzan --format json",
        "audiocnn verify gtzan",
        "audiocnn features gtzan --kind mel",
        "audiocnn features gtzan --kind both -j 8",
        "audiocnn features gtzan --kind waveform --sample-rate 22050",
        "audiocnn train configs/gtzan-musicnn.yaml --set epochs=50",
        "audiocnn evaluate runs/gtzan-musicnn-<timestamp> --split test",
        "audiocnn export runs/gtzan-musicnn-<timestamp>/best.safetensors --format onnx",
    ],
    "mtat": [
        "audiocnn features mtat --kind mel --set n_mels=128",
        "audiocnn train configs/mtat-fcn.yaml",
        "audiocnn evaluate runs/mtat-fcn-20260101-120000 --split test",
        "audiocnn train configs/mtat-cnnsa.yaml",
        "audiocnn tag song.mp3 --model runs/mtat-cnnsa-<timestamp> --attention attention/",
    ],
    "own folder": [
        "audiocnn prepare folder --source ~/music --name mysongs",
        "audiocnn prepare folder --source ~/music --labels labels.csv --name mytags",
        "audiocnn prepare folder --source ~/clips --labels labels.csv --name mine",
        "audiocnn train configs/transfer-musicnn.yaml --set dataset=mine",
        "audiocnn train configs/small-from-scratch.yaml --set dataset=mine",
        "audiocnn evaluate runs/transfer-musicnn-20260101-120000 --split test",
        "audiocnn tag new-clip.wav --model runs/transfer-musicnn-20260101-120000",
        "audiocnn prepare folder --source /tmp/six --labels /tmp/six/labels.csv --name six",
        "audiocnn train configs/fma-small-musicnn.yaml --set dataset=six --set epochs=10 --set batch_size=16 "
        "--device cpu --run-dir runs/six",
        "audiocnn evaluate runs/six --split test --format json",
    ],
    "tagging": [
        "audiocnn tag song.mp3 my_music/ --top-k 5 --format json",
        "audiocnn tag examples/chorale.flac --model vgg-mtt --top-k 3",
        "audiocnn tag my_music/ --output tags.jsonl -j 2",
        "audiocnn tag ~/Music --output library.jsonl -j 2",
        "audiocnn tag ~/Music --output library.jsonl",
        "audiocnn tag ~/Music --output library.jsonl --force",
        "audiocnn tag song.mp3",
        "audiocnn tag song.mp3 --backend torch",
    ],
}

# Shown commands another test runs as they are (its source holds the argv, checked below).
RUN_ELSEWHERE = {
    "audiocnn models": ("models/test_models.py", "test_cli_models_table_and_bad_format", 'run(["models"])'),
    "audiocnn export musicnn-mtt --format onnx --output musicnn-mtt.onnx": (
        "tagging/test_export_onnx.py",
        "test_musicnn_mtt_in_onnxruntime_matches_tag",
        '"export", "musicnn-mtt", "--format", "onnx", "-o", str(out)',
    ),
}


def test_every_shown_command_runs_or_is_excused() -> None:
    assert len(SHOWN) >= 40, "the commands were not found: did the fences change?"
    listed = [line for lines in WALKS.values() for line in lines] + list(RUN_ELSEWHERE) + list(EXCUSED)
    assert len(listed) == len(set(listed)), "a command is run (or excused) twice"
    stale = [line for line in listed if line not in SHOWN]
    assert not stale, f"run or excused here but no longer shown in the docs: {stale}"
    quoted = [cmd for _doc, kind, cmd, _q in _quoted() if kind != "top-5"]  # run by the quote test
    new = [line for line in SHOWN if line not in listed and line not in quoted]
    assert not new, f"shown in the docs but neither run nor excused: {new}"


@pytest.mark.parametrize("line", list(RUN_ELSEWHERE))
def test_commands_run_elsewhere_are_run_there(line: str) -> None:
    module, test, argv = RUN_ELSEWHERE[line]
    source = (ROOT / "tests" / module).read_text(encoding="utf-8")
    body = re.search(rf"^def {test}\(.*?(?=^def |^@|\Z)", source, flags=re.S | re.M)
    assert body and argv in body.group(0), f"{module}::{test} no longer runs `{line}`"


def test_walk_listing(box, capsys) -> None:
    for line in WALKS["listing"]:
        out, _ = _run(box, capsys, line)
        assert out.strip(), line


def test_walk_gtzan(box, capsys, monkeypatch) -> None:
    """README's command tour and the GTZAN examples of datasets, features, training, tagging."""
    fx = gtzan_fixture()
    patch_remotes(monkeypatch, "gtzan", fx.files)
    (box.home / "Downloads").mkdir()
    (box.home / "Downloads" / "genres.tar.gz").write_bytes(fx.files["genres.tar.gz"])
    walk = WALKS["gtzan"]
    _run(box, capsys, walk[0])
    info = json.loads(_run(box, capsys, walk[1])[0])
    assert len(info["labels"]) == 10
    assert "missing: 0" in _run(box, capsys, walk[2])[0]
    for line in walk[3:-1]:
        _run(box, capsys, line)
    run_dir = next((box.cwd / "runs").glob("gtzan-musicnn-*"))
    assert (run_dir / "eval-test" / "metrics.json").is_file()
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed (pip install -e '.[onnx]'): the export was not run")
    _run(box, capsys, walk[-1])
    assert (box.cwd / "best.onnx").is_file() and (box.cwd / "best.frontend.onnx").is_file()


def test_walk_mtat(box, capsys, monkeypatch) -> None:
    """MTAT's config and feature example, and the self-attention model's attention over time
    (tagging.md), on the MTAT-layout fixture prepared from a folder."""
    fx = mtat_fixture()
    patch_remotes(monkeypatch, "mtat", fx.files)
    source = box.root / "mtat-files"
    source.mkdir()
    for name, data in fx.files.items():
        (source / name).write_bytes(data)
    assert run(["prepare", "mtat", "--source", str(source), "-j", "1"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    write_audio(box.cwd / "song.mp3", synth_tone(4.0, 22050), 22050)
    for line in WALKS["mtat"]:
        _run(box, capsys, line)
    assert (next((box.cwd / "runs").glob("mtat-fcn-*")) / "eval-test" / "metrics.json").is_file()
    attention = np.load(box.cwd / "attention" / "song.attention.npy")  # tagging.md's attention example
    assert attention.shape == (1, 118) and np.allclose(attention.sum(1), 1.0, atol=1e-5)


@needs_musicnn
def test_walk_own_folder(box, capsys) -> None:
    """Your own folder: sub-folder labels, a labels CSV, both recipes, evaluate, tag; and
    the small-folder experiment of training.md (fewer, shorter clips)."""
    from audiocnn.testing.learning_data import write_folder

    rels = _labelled_folder(box.home / "music")
    (box.cwd / "labels.csv").write_text(
        "path,labels\n" + "".join(f"{r},{r.split('/')[0]};{'odd' if i % 2 else 'even'}\n" for i, r in enumerate(rels))
    )
    walk = WALKS["own folder"]
    _run(box, capsys, walk[0])
    _run(box, capsys, walk[1])
    rels = _labelled_folder(box.home / "clips", per_label=6)
    splits = ["train"] * 4 + ["valid", "test"]
    (box.cwd / "labels.csv").write_text(
        "path,labels,split\n" + "".join(f"{r},{r.split('/')[0]},{splits[i % 6]}\n" for i, r in enumerate(rels))
    )
    write_audio(box.cwd / "new-clip.wav", synth_tone(4.0, 16000), 16000)
    for line in walk[2:7]:
        out, _ = _run(box, capsys, line)
    assert "low" in out and "high" in out
    write_folder(box.root / "six", "single-label", counts={"train": 6, "valid": 6, "test": 6}, seconds=3.0, sr=16000)
    for line in walk[7:]:
        out, _ = _run(box, capsys, line)
    assert json.loads(out)["split"] == "test"


def _records(path: Path) -> list[dict]:
    """The records of a .jsonl results file (its first line marks it as audiocnn's)."""
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["audiocnn"] == "tag-results"
    return lines[1:]


@needs_musicnn
def test_walk_tagging(box, capsys) -> None:
    write_audio(box.cwd / "song.mp3", synth_tone(4.0, 22050), 22050)
    _songs(box.cwd / "my_music")
    _songs(box.home / "Music", n=3)
    walk = WALKS["tagging"]
    out, _ = _run(box, capsys, walk[0])
    assert [len(json.loads(x)["tags"]) for x in out.splitlines()] == [5, 5, 5]
    assert "model vgg-mtt" in _run(box, capsys, walk[1])[0]
    _run(box, capsys, walk[2])
    assert len(_records(box.cwd / "tags.jsonl")) == 2
    _run(box, capsys, walk[3])
    assert "skipping 3 files" in _run(box, capsys, walk[4])[1]
    assert "skipping" not in _run(box, capsys, walk[5])[1]
    assert len(_records(box.cwd / "library.jsonl")) == 3
    assert _run(box, capsys, walk[6])[0] == _run(box, capsys, walk[7])[0]  # both engines print the same table


# --------------------------------------------------------------------------- quoted outputs of tag

OUTPUT_MARK = re.compile(r"<!-- (output|record|top-5) of: (audiocnn [^>]*?) -->\n")


def _quoted() -> list[tuple[str, str, str, str]]:
    """(page, kind, command, quoted text) for every marked quote of a tag output."""
    found = []
    for doc in DOCS:
        text = _text(doc)
        for m in OUTPUT_MARK.finditer(text):
            rest = text[m.end() :]
            if m.group(1) == "top-5":
                quote = rest.split("\n\n")[0]
            else:
                fence = FENCE.match(rest)
                assert fence, f"{doc}: the quote marked `{m.group(0).strip()}` is not followed by a fenced block"
                quote = fence.group(1)
            found.append((doc, m.group(1), m.group(2), quote))
    return found


def test_every_quoted_chorale_output_is_marked() -> None:
    """A block that quotes tag's output on the example carries a mark, so the test below
    compares it; an unmarked copy would go stale unseen."""
    marked = {quote for _doc, _kind, _cmd, quote in _quoted()}
    for doc in DOCS:
        for block in FENCE.findall(_text(doc)):
            if "examples/chorale.flac  [" in block or '"path": "/.../examples/chorale.flac"' in block:
                assert block in marked, f"{doc} quotes tag's output on examples/chorale.flac without a mark"
    assert {kind for _doc, kind, _cmd, _q in _quoted()} == {"output", "record", "top-5"}


@needs_musicnn
def test_quoted_chorale_outputs_are_what_tag_prints(box, capsys) -> None:
    """Compared exactly, but for a record's `path` and `mtime` (the reader's own file) and
    `model_sha256` (the digest of the imported checkpoint, which names where musicnn was
    installed)."""
    for doc, kind, command, quote in _quoted():
        if kind == "output":
            assert _run(box, capsys, command)[0].rstrip("\n") == quote.rstrip("\n"), f"{doc}: `{command}`"
        elif kind == "record":
            _run(box, capsys, command)
            out = Path(_argv(box, command)[_argv(box, command).index("--output") + 1])
            got = json.loads(out.read_text().splitlines()[-1])
            want = json.loads(quote)
            assert got["path"] == str((box.cwd / "examples" / "chorale.flac").absolute()), got["path"]
            for key in ("path", "mtime", "model_sha256"):
                got.pop(key), want.pop(key)
            assert got == want, f"{doc}: `{command}`"
        else:
            rows = [r.strip("|").split("|") for r in quote.splitlines()[2:]]
            for model, tags in ((a.strip(), b.strip()) for a, b in rows):
                table = _run(box, capsys, command.replace("NAME", model))[0]
                printed = re.findall(r"^\s+\d+\s{2}(.+?)\s{2,}(\d\.\d{3})$", table, flags=re.M)
                assert ", ".join(f"{t} {s}" for t, s in printed) == tags, f"{doc}: {model}"


# --------------------------------------------------------------------------- commands and options exist


def _command_and_options(line: str) -> tuple[list[str], list[str]]:
    words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))[1:]
    cmd: list[str] = []
    for w in words:
        if w.startswith("-"):
            break
        if (w.isidentifier() or w in ("pretrained",)) and (
            not cmd or (cmd == ["pretrained"] and w in ("list", "import"))
        ):
            cmd.append(w)
            continue
        break
    opts = sorted({w.split("=")[0] for w in words if w.startswith("--")})
    return cmd, opts


@pytest.mark.parametrize("line", MENTIONED)
def test_command_and_options_exist(line: str, capsys) -> None:
    cmd, opts = _command_and_options(line)
    if not cmd:
        assert set(opts) <= GLOBAL_OPTIONS, line
        return
    assert run([*cmd, "--help"]) == 0, f"the docs show `{line}`, but `audiocnn {' '.join(cmd)}` does not exist"
    help_text = capsys.readouterr().out
    for opt in opts:
        if opt in GLOBAL_OPTIONS:
            continue
        assert opt in help_text, f"the docs show `{line}`, but `audiocnn {' '.join(cmd)}` has no {opt}"


# --------------------------------------------------------------------------- the pages themselves


def test_readme_opens_with_the_two_ci_commands() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_commands.py"), str(ROOT / "README.md")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 2
    assert "pip install" in out[0] and "audiocnn tag examples/chorale.flac" in out[0]
    assert out[1] == ".venv/bin/python -m pytest -q"
    assert (ROOT / "examples" / "chorale.flac").is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_commands.py README.md" in ci


def test_readme_fits_and_links_every_page() -> None:
    readme = _text("README.md")
    assert len(readme.splitlines()) <= 250
    for page in PAGES:
        assert (ROOT / "docs" / f"{page}.md").is_file(), page
        assert f"](docs/{page}.md)" in readme, f"README does not link docs/{page}.md"
    for name in ("LICENSE", "CHANGELOG.md"):
        assert (ROOT / name).is_file() and f"]({name})" in readme


def test_python_floor_is_stated_once() -> None:
    floor = re.search(r'^requires-python = ">=(3\.\d+)"', _text("pyproject.toml"), flags=re.M)
    assert floor, "pyproject.toml states no requires-python"
    assert f"Python {floor.group(1)}" in _text("README.md").split("## ")[0]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS)
def test_links_point_at_files_and_headings_that_exist(doc: str) -> None:
    here = (ROOT / doc).parent
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", _text(doc))):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (here / path).resolve() if path else ROOT / doc
        assert file.exists(), f"{doc} links {target}, which does not exist"
        if anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", file.read_text(encoding="utf-8")), flags=re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{doc} links {target}: no such heading"


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_the_docs_name_exists(doc: str) -> None:
    """A guarantee is only as good as its test: each `folder/file.py::name` the docs cite
    (a path under tests/) is a test function of that file (parametrised ids allowed)."""
    for file, name in re.findall(r"`?(?:tests/)?((?:\w+/)*test_\w+\.py)::(\w+)", _text(doc)):
        path = ROOT / "tests" / file
        assert path.is_file(), f"{doc} cites {file}, which does not exist"
        assert re.search(rf"^def {name}\(", path.read_text(encoding="utf-8"), flags=re.M), (
            f"{doc} cites {file}::{name}, which is not a test there"
        )
