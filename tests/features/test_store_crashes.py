"""Crash safety of the feature store: a killed `features -j 2` run takes its workers and
its lock with it, a live lock holder is named and a dead one taken over, and a write that
fails (disk full) is one line and leaves no temp files."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from audiocnn import fileio
from audiocnn.cli.main import run
from audiocnn.datasets.manifest import Clip, Manifest, write_manifest
from audiocnn.errors import AudiocnnError, FeatureError
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.testing.commands import last_line
from audiocnn.testing.faults import enospc_for
from audiocnn.testing.processes import alive, child_env, children, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    proc = subprocess.Popen(cmd, env=child_env(OMP_NUM_THREADS="1"), stdout=log, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        assert wait_for(lambda: any((ds / "features").glob("mel-*/parts/*.json")), 60), "no chunk committed"
        workers = children(proc.pid)
        assert len(workers) >= 2, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        store = next((ds / "features").glob("mel-*"))
        assert not (store / "complete.json").exists(), "the run finished before it was killed: make it slower"
        assert wait_for(lambda: not any(alive(w) for w in workers), 5), "feature workers outlived their parent"
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)

    again = subprocess.run(
        cmd + ["--format", "json"], env=child_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300
    )
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
        [sys.executable, "-c", script, str(lock)],
        env=child_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.split()[0])
    try:
        assert alive(child)
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child held it
        finally:
            os.close(fd)
    finally:
        os.kill(child, signal.SIGKILL)


def test_feature_store_write_failure_is_one_line_and_leaves_no_temp_files(data_dir, monkeypatch, capsys):
    _slow_dataset(data_dir, 6)
    with monkeypatch.context() as m:
        seen = enospc_for(m, "complete.json")
        assert run(["features", "slow", "--kind", "waveform", "-j", "1", "--no-progress"]) == 1
    line = last_line(capsys.readouterr().err)
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
