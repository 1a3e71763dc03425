"""Crash safety and concurrency: killed feature runs, two trainings on one run folder,
failing writes (disk full, read-only), truncated training state."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import synth_tone, write_audio
from train_helpers import make_dataset, write_config

from audiocnn import fileio
from audiocnn.cli.main import run
from audiocnn.datasets.manifest import Clip, Manifest, write_manifest
from audiocnn.errors import AudiocnnError, FeatureError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err, err
    return lines[-1]


# -- helpers: processes -----------------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    """State letter of ``pid`` (None when gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()[0]


def _alive(pid: int) -> bool:
    return _proc_state(pid) not in (None, "Z", "X")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            if int(text[text.rfind(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# -- 1. a killed `audiocnn features -j 2` --------------------------------------------------------


def _slow_dataset(data: Path, n: int) -> Path:
    """Many clips (all decoding the same 4 s stereo FLAC): a run that lasts seconds."""
    root = data / "slow"
    write_audio(root / "raw" / "song.flac", synth_tone(4.0, 44100, channels=2), 44100)
    clips = [
        Clip(
            id=f"c{i:04d}",
            path="song.flac",
            duration=4.0,
            sample_rate=44100,
            labels=["x"],
            split=("train", "valid", "test")[i % 3],
        )
        for i in range(n)
    ]
    write_manifest(
        Manifest(name="slow", dataset="folder", task="single-label", labels=["x"], clips=clips, audio_root="raw"), root
    )
    return root


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_feature_run_takes_its_workers_and_lock_with_it(tmp_path):
    data = tmp_path / "data"
    ds = _slow_dataset(data, 600)
    cmd = [
        sys.executable,
        "-m",
        "audiocnn",
        "--data-dir",
        str(data),
        "features",
        "slow",
        "--kind",
        "mel",
        "-j",
        "2",
        "--no-progress",
    ]
    log = open(tmp_path / "first.log", "wb")  # a file, not a pipe: surviving workers would hold a pipe open
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        assert _wait_for(lambda: any((ds / "features").glob("mel-*/parts/*.json")), 60), "no chunk committed"
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        store = next((ds / "features").glob("mel-*"))
        assert not (store / "complete.json").exists(), "the run finished before it was killed: make it slower"
        assert _wait_for(lambda: not any(_alive(w) for w in workers), 5), "feature workers outlived their parent"
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)

    again = subprocess.run(cmd + ["--format", "json"], env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["clips"] == {"train": 200, "valid": 200, "test": 200}
    assert not (store / "parts").exists() and not list(store.glob(".*tmp*"))


def test_a_live_lock_holder_is_named_and_a_dead_one_taken_over(tmp_path):
    """A lock whose flock is still held (here by a helper process) is busy while the PID
    recorded in it lives, and is taken over once that PID is gone."""
    lock = tmp_path / ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "os.pwrite(fd, (sys.argv[2] + '\\n').encode(), 0)\n"
                "print('locked', flush=True)\n"
                "time.sleep(60)\n"
            ),
            str(lock),
            "PID",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.pwrite(os.open(lock, os.O_RDWR), f"{holder.pid}\n".encode(), 0)

        def busy(pid):
            return AudiocnnError(f"busy {pid}")

        with pytest.raises(AudiocnnError, match=f"busy {holder.pid}"):
            fileio.acquire_lock(lock, busy)
        # the recorded holder dies, but a process it forked keeps the flock: stale
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        fd = os.open(lock, os.O_RDWR)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{dead.pid}\n".encode(), 0)
        os.close(fd)
        fd = fileio.acquire_lock(lock, busy)
        try:
            assert lock.read_text().split()[0] == str(os.getpid())
        finally:
            fileio.release_lock(fd)
        assert not lock.exists()
    finally:
        holder.kill()
        holder.wait()


def test_forked_children_do_not_keep_a_lock_alive(tmp_path):
    """A process holding a lock forks a child and dies without unlocking: the flock must
    be free at once (the child closed its inherited copy), not only by stale takeover."""
    import fcntl

    lock = tmp_path / "train.lock"
    script = (
        "import os, sys, time\n"
        "from audiocnn import fileio\n"
        "fileio.acquire_lock(sys.argv[1], lambda pid: RuntimeError(pid))\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    null = os.open(os.devnull, os.O_RDWR)\n"
        "    for k in (0, 1, 2): os.dup2(null, k)\n"
        "    time.sleep(30); os._exit(0)\n"
        "print(child, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(lock)], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.split()[0])
    try:
        assert _alive(child)
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child held it
        finally:
            os.close(fd)
    finally:
        os.kill(child, signal.SIGKILL)


# -- training runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hardening") / "data"
    d.mkdir()
    make_dataset(d, "tones", "single-label")
    return d


def cli(data: Path, *args: str) -> int:
    return run(["--data-dir", str(data), *args])


def _rows(path: Path) -> list[dict[str, str]]:
    from audiocnn.training.callbacks import metrics_rows

    return metrics_rows(path)


def _epoch(path: Path) -> int:
    return int(torch.load(path, weights_only=False)["epoch"])


# -- 2. two trainings on one run folder ---------------------------------------------------------


def test_second_training_on_a_busy_run_folder_is_refused_at_once(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "long.yaml", dataset="tones", model="test-tiny-mel", epochs=100_000)
    rd = tmp_path / "run"
    lock = rd / "train.lock"
    log = open(tmp_path / "first.log", "wb")
    first = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "train_helpers.py"),
            "--data-dir",
            str(data),
            "train",
            str(cfg),
            "--run-dir",
            str(rd),
            "--device",
            "cpu",
        ],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert _wait_for(lambda: lock.is_file() and lock.read_text().strip() != "", 60), "no lock taken"
        t0 = time.monotonic()
        code = cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--set", "epochs=1")
        err = capsys.readouterr().err
        assert code == 1 and time.monotonic() - t0 < 5
        line = _one_line_error(err)
        assert f"another `audiocnn train` (PID {first.pid}) is using this run folder" in line, line
        assert str(rd) in line and "--run-dir" in line
        assert first.poll() is None, "the first run must be unharmed"
        first.kill()  # kill -9: no clean-up, its lock file stays behind with a dead PID
        first.wait(60)
    finally:
        log.close()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert lock.read_text().split()[0] == str(first.pid)
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--set", "epochs=1", "--restart") == 0
    assert [r["epoch"] for r in _rows(rd / "metrics.csv")] == ["1"]
    assert not lock.exists()


# -- 3. failing writes ---------------------------------------------------------------------------


def _enospc_for(monkeypatch, name: str, after: int = 0) -> list[str]:
    """os.replace onto a file called ``name`` fails with ENOSPC after ``after`` successes."""
    real = os.replace
    seen: list[str] = []

    def replace(src, dst, *a, **kw):
        if Path(dst).name == name:
            seen.append(str(dst))
            if len(seen) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    return seen


def test_disk_full_while_saving_training_state(data, tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=3)
    rd = tmp_path / "run"
    with monkeypatch.context() as m:
        _enospc_for(m, "last.pt", after=1)  # epoch 1 is saved, epoch 2 hits a full disk
        assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 1
    line = _one_line_error(capsys.readouterr().err)
    assert f"{rd / 'last.pt'}: cannot write (No space left on device)" in line
    assert "--resume" in line and "epoch 2" in line
    assert not [p.name for p in rd.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert _epoch(rd / "last.pt") == 1  # what was written stays readable
    assert not (rd / "train.lock").exists()
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume") == 0
    assert [r["epoch"] for r in _rows(rd / "metrics.csv")] == ["1", "2", "3"]


@pytest.mark.parametrize("fail", ["replace", "fsync", "write"])
def test_atomic_write_removes_its_temp_file_and_keeps_the_old_one(tmp_path, monkeypatch, fail):
    target = tmp_path / "out" / "metrics.json"
    fileio.atomic_write_bytes(target, b"old")
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if fail == "replace":
        monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(enospc))
    elif fail == "fsync":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(enospc))
    else:
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullFile(real_fdopen(fd, *a, **k)))
    with pytest.raises(fileio.FileWriteError) as err:
        fileio.atomic_write_bytes(target, b"new" * 1000)
    monkeypatch.undo()
    assert str(err.value) == f"{target}: cannot write (No space left on device); the previous file is unchanged"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]
    assert target.read_bytes() == b"old"


def test_a_plot_that_cannot_be_written_leaves_no_temp_file(tmp_path, monkeypatch):
    from audiocnn.training import plots

    per_tag = [{"label": "a", "roc_auc": 0.9, "pr_auc": 0.8, "n_positive": 3}]
    target = tmp_path / "per_tag_roc_auc.png"
    plots.plot_per_tag_auc(per_tag, target)
    before = target.read_bytes()
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(enospc))
    with pytest.raises(fileio.FileWriteError):
        plots.plot_per_tag_auc(per_tag, target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_tag_roc_auc.png"]
    assert target.read_bytes() == before


class _FullFile:
    """A writable file on a full disk: every write fails with ENOSPC."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_read_only_or_uncreatable_folders(tmp_path, monkeypatch):
    from audiocnn.training.config import TrainConfig, save_config
    from audiocnn.training.state import save_state

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(fileio.FileWriteError, match=r"file/run/config.yaml: cannot create its folder"):
        save_config(TrainConfig(dataset="d", model="m"), blocker / "run" / "config.yaml")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "last.pt").write_bytes(b"previous")
    real_open = os.open

    def read_only(path, flags, *a, **kw):  # root ignores chmod: simulate EROFS
        if Path(path).parent == ro and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(
        fileio.FileWriteError,
        match=r"ro/config.yaml: cannot write \(Read-only file system\); "
        "nothing was written",
    ):
        save_config(TrainConfig(dataset="d", model="m"), ro / "config.yaml")
    from audiocnn.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"ro/last.pt: cannot write \(Read-only file system\)"):
        save_state(ro / "last.pt", {"epoch": 3})
    monkeypatch.undo()
    assert sorted(p.name for p in ro.iterdir()) == ["last.pt"] and (ro / "last.pt").read_bytes() == b"previous"


def test_feature_store_write_failure_is_one_line_and_leaves_no_temp_files(data_dir, monkeypatch, capsys):
    _slow_dataset(data_dir, 6)
    with monkeypatch.context() as m:
        seen = _enospc_for(m, "complete.json")
        assert run(["features", "slow", "--kind", "waveform", "-j", "1", "--no-progress"]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert seen and "complete.json: cannot write (No space left on device)" in line
    assert "audiocnn features slow --kind waveform" in line
    store = next((data_dir / "slow" / "features").glob("waveform-*"))
    assert not [p for p in store.rglob("*") if ".tmp" in p.name]
    assert run(["features", "slow", "--kind", "waveform", "-j", "1", "--no-progress"]) == 0
    assert (store / "complete.json").is_file()


def test_chunk_temp_file_is_removed_when_the_disk_fills(data_dir, monkeypatch):
    from audiocnn.features.frontends import WaveformConfig
    from audiocnn.features.store import chunks as store_mod
    from audiocnn.training.data import open_dataset_store

    ds = _slow_dataset(data_dir, 3)
    real = store_mod._write
    calls: list[int] = []
    monkeypatch.setattr(store_mod, "_write", lambda fh, arr: real(_Failing(fh, calls), arr))
    with pytest.raises(FeatureError, match="No space left on device"):
        open_dataset_store(ds, WaveformConfig(), jobs=1, progress=False)
    store = next((ds / "features").glob("waveform-*"))
    assert not [p for p in store.rglob("*") if ".tmp" in p.name]


class _Failing:
    """A file object whose third write fails with ENOSPC."""

    def __init__(self, fh, calls: list) -> None:
        self.fh, self.calls, self.name = fh, calls, fh.name

    def write(self, b):
        self.calls.append(1)
        if len(self.calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.fh.write(b)


# -- 4. unreadable last.pt ------------------------------------------------------------------------


def test_truncated_last_pt_resumes_from_the_previous_state(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=2)
    full, rd = tmp_path / "full", tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(full), "--device", "cpu", "--set", "epochs=3") == 0
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 0
    assert _epoch(rd / "last.pt") == 2 and _epoch(rd / "last.prev.pt") == 1
    blob = (rd / "last.pt").read_bytes()
    (rd / "last.pt").write_bytes(blob[: len(blob) // 2])
    capsys.readouterr()
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume", "--set", "epochs=3") == 0
    err = capsys.readouterr().err
    assert "last.pt: unreadable training state" in err and "last.prev.pt (after epoch 1)" in err
    assert _rows(rd / "metrics.csv") == _rows(full / "metrics.csv")  # epoch 2 redone exactly
    assert _epoch(rd / "last.pt") == 3 and _epoch(rd / "last.prev.pt") == 2


@pytest.mark.parametrize("prev", ["missing", "empty"])
def test_empty_last_pt_without_a_good_previous_state(data, tmp_path, capsys, prev):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    rd = tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 0
    (rd / "last.pt").write_bytes(b"")
    if prev == "missing":
        (rd / "last.prev.pt").unlink(missing_ok=True)
    else:
        (rd / "last.prev.pt").write_bytes(b"")
    capsys.readouterr()
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume") == 1
    line = _one_line_error(capsys.readouterr().err)
    assert f"{rd / 'last.pt'}: unreadable training state (empty file)" in line
    assert f"`audiocnn train {cfg} --run-dir {rd} --restart`" in line and "fresh --run-dir" in line
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "already holds a run" in line and "--restart" in line
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--restart", "--set", "epochs=2") == 0
    assert [r["epoch"] for r in _rows(rd / "metrics.csv")] == ["1", "2"] and _epoch(rd / "last.pt") == 2


class _Payload:
    """Unpickling this creates ``marker``: what a crafted ``last.pt`` could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite_state(path: Path, **changes) -> None:
    state = torch.load(path, weights_only=False)  # our own file, written by the test's run
    state.update(changes)
    path.unlink()  # not through a hard link to last.prev.pt
    torch.save(state, path)


def test_a_state_that_would_run_code_is_refused_and_never_replaced(data, tmp_path, capsys):
    """A crafted last.pt (or last.prev.pt behind a broken last.pt) is one line naming the
    file; nothing in it runs, nothing is resumed, nothing in the folder changes."""
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=2)
    rd, marker = tmp_path / "run", tmp_path / "marker"
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 0
    good = torch.load(rd / "last.pt", weights_only=False)
    _rewrite_state(rd / "last.pt", history=[*good["history"], _Payload(marker)])
    for broken in ("last.pt", "last.prev.pt"):
        if broken == "last.prev.pt":  # the crafted state as the fallback of an empty last.pt
            (rd / "last.prev.pt").unlink()
            os.replace(rd / "last.pt", rd / "last.prev.pt")
            (rd / "last.pt").write_bytes(b"")
        before = {p.name: p.read_bytes() for p in rd.iterdir() if p.name != "config.yaml"}
        capsys.readouterr()
        assert (
            cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume", "--set", "epochs=3") == 1
        )
        line = _one_line_error(capsys.readouterr().err)
        assert line.startswith(f"error: {rd / broken}: refused: this training state would run code when loaded ("), line
        assert f"`audiocnn train {cfg} --run-dir {rd} --restart`" in line
        assert not marker.exists()
        assert {p.name: p.read_bytes() for p in rd.iterdir() if p.name != "config.yaml"} == before


def test_a_state_from_before_numpy_rng_tensors_resumes_exactly(data, tmp_path):
    """last.pt files written before the numpy RNG state became a tensor still resume."""
    import numpy as np

    from audiocnn.training.state import rng_state, set_rng_state

    np.random.seed(7)
    saved = rng_state()
    expect = np.random.random(4)
    set_rng_state(saved)
    assert np.array_equal(np.random.random(4), expect)

    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=2)
    full, rd = tmp_path / "full", tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(full), "--device", "cpu", "--set", "epochs=3") == 0
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 0
    state = torch.load(rd / "last.pt", weights_only=True)
    for r in state["rng"]:
        name, key, *rest = r["numpy"]
        r["numpy"] = (name, key.numpy().astype(np.uint32), *rest)  # as the old code saved it
    _rewrite_state(rd / "last.pt", rng=state["rng"])
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume", "--set", "epochs=3") == 0
    assert _rows(rd / "metrics.csv") == _rows(full / "metrics.csv")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_audiocnn_did_not_write_is_never_written_or_cleared(data, tmp_path, capsys):
    """A user's folder with a config.yaml, metrics.csv... is refused, --restart too; in a
    run folder, --restart removes what training wrote and nothing of the user's."""
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    mine = tmp_path / "myproj"
    (mine / "tensorboard").mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "best.safetensors", "curves.png", "tensorboard/notes.txt"):
        (mine / name).write_text(f"the user's {name}\n")
    before = _tree(mine)
    for extra in ([], ["--restart"], ["--resume"]):
        capsys.readouterr()
        assert cli(data, "train", str(cfg), "--run-dir", str(mine), "--device", "cpu", *extra) == 2
        assert _one_line_error(capsys.readouterr().err) == (
            f"error: {mine} is not an audiocnn run folder (no audiocnn-run.json) and not empty (best.safetensors, "
            "config.yaml, curves.png, ...); audiocnn writes into, restarts and deletes from no other folder "
            "(pass a new or empty --run-dir)"
        )
        assert _tree(mine) == before

    rd = tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 0
    assert json.loads((rd / "audiocnn-run.json").read_text())["audiocnn"] == "run folder"
    (rd / "tensorboard").mkdir(exist_ok=True)
    (rd / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"")  # what SummaryWriter writes
    (rd / "tensorboard" / "notes.txt").write_text("the user's notes\n")
    (rd / "notes.txt").write_text("the user's notes\n")
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--restart") == 0
    assert sorted(p.name for p in (rd / "tensorboard").iterdir()) == ["notes.txt"] and (rd / "notes.txt").is_file()

    (rd / "audiocnn-run.json").unlink()  # a run folder written before the marker is still one
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 2
    assert "already holds a run" in _one_line_error(capsys.readouterr().err)
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume", "--set", "epochs=2") == 0
    assert (rd / "audiocnn-run.json").is_file() and _epoch(rd / "last.pt") == 2


def test_restart_and_resume_together_is_a_usage_error(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    assert cli(data, "train", str(cfg), "--run-dir", str(tmp_path / "r"), "--resume", "--restart") == 2
    assert "--resume and --restart" in _one_line_error(capsys.readouterr().err)
