"""`audiocnn tag PATHS --output FILE`: the resumable library run, its records, -j workers."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import audiocnn.tagging.command as command
from audiocnn.cli.main import run
from audiocnn.errors import UsageError
from audiocnn.fileio import held_lock
from audiocnn.tagging import Tagger
from audiocnn.tagging.results import ResultsFile
from audiocnn.tagging.song import StreamStats
from audiocnn.tagging.stream import tag_stream
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.testing.models import SLOW_ENV, SR, make_checkpoint

torch.set_num_threads(1)

LABELS = ["rock", "jazz", "piano", "vocal"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "slow.safetensors", "test-slow-mel", labels=LABELS)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A small library in several formats and rates, one file corrupt."""
    d = tmp_path_factory.mktemp("library")
    for i in range(12):
        fmt = [("wav", {}), ("flac", {}), ("ogg", {"format": "OGG", "subtype": "VORBIS"})][i % 3]
        sr = [SR, 16000, 22050][i % 3]
        write_audio(d / f"album{i % 2}" / f"song{i:02d}.{fmt[0]}", synth_tone(1.5 + 0.25 * i, sr, seed=i), sr, **fmt[1])
    (d / "album0" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)
    return d


def _tag(capsys, *args: str) -> tuple[int, str, str]:
    code = run(["tag", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _records(path: Path) -> dict[str, dict]:
    header, *recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert header["audiocnn"] == "tag-results" and header["version"] == 1  # the file says what it is
    by_path = {r["path"]: r for r in recs}
    assert len(by_path) == len(recs), "a file has more than one record"
    return by_path


def test_records_equal_plain_tag_and_a_rerun_skips_them(capsys, ckpt, library, tmp_path):
    out = tmp_path / "out.jsonl"
    code, stdout, err = _tag(capsys, str(library), "-m", str(ckpt), "--output", str(out))
    assert code == 1, err  # the broken file fails the run...
    assert stdout == ""  # results go to the file, not stdout
    recs = _records(out)
    assert len(recs) == 13  # ...but every file has its record, the broken one with its error
    broken = recs[str(library / "album0" / "broken.wav")]
    assert "error" in broken and "tags" not in broken and "broken.wav" in broken["error"]
    assert "tagged 12 of 13 files" in err and "1 failed" in err

    code, stdout, _ = _tag(capsys, str(library / "album1"), "-m", str(ckpt), "--format", "json")
    assert code == 0
    plain = [json.loads(line) for line in stdout.splitlines()]
    assert len(plain) == 6
    for p in plain:
        rec = recs[os.path.abspath(p["path"])]
        st = os.stat(p["path"])
        assert (rec["size"], rec["mtime"]) == (st.st_size, st.st_mtime)
        assert len(rec["model_sha256"]) == 16
        assert {k: v for k, v in rec.items() if k in p and k != "path"} == {k: v for k, v in p.items() if k != "path"}

    code, _, err = _tag(capsys, str(library), "-m", str(ckpt), "--output", str(out))
    assert "skipping 12 files already in" in err and "trying again 1 file that failed before" in err
    assert "tagged 0 of 13 files" in err
    assert _records(out) == recs

    code, _, err = _tag(capsys, str(library), "-m", str(ckpt), "--output", str(out), "--force")
    assert "tagged 12 of 13 files" in err and "skipping" not in err
    assert _records(out) == recs


def test_changed_file_and_other_options_are_tagged_again(capsys, ckpt, library, tmp_path):
    lib = tmp_path / "lib"
    for f in sorted((library / "album1").iterdir())[:3]:
        write_audio(lib / f.name, synth_tone(2.0, SR, seed=len(f.name)), SR)
    out = tmp_path / "out.jsonl"
    assert _tag(capsys, str(lib), "-m", str(ckpt), "-o", str(out))[0] == 0
    before = _records(out)
    changed = sorted(lib.iterdir())[0]
    write_audio(changed, synth_tone(3.0, SR, seed=99), SR)
    code, _, err = _tag(capsys, str(lib), "-m", str(ckpt), "-o", str(out))
    assert "skipping 2 files" in err and "tagged 1 of 3 files" in err
    after = _records(out)
    assert after[str(changed)]["duration"] == 3.0 and after[str(changed)] != before[str(changed)]
    _, _, err = _tag(capsys, str(lib), "-m", str(ckpt), "-o", str(out), "--aggregate", "max")
    assert "tagged 3 of 3 files" in err
    assert {r["options"]["aggregate"] for r in _records(out).values()} == {"max"}
    _, _, err = _tag(capsys, str(lib), "-m", str(ckpt), "-o", str(out), "--aggregate", "max", "--threshold", "0")
    assert "tagged 3 of 3 files" in err  # the threshold is one of the options a record is kept for
    for rec in _records(out).values():
        assert rec["options"]["threshold"] == 0.0 and sorted(rec["predicted"]) == sorted(LABELS)


def test_csv_results_file(capsys, ckpt, library, tmp_path):
    out = tmp_path / "lib.csv"
    _tag(capsys, str(library / "album1"), "-m", str(ckpt), "-o", str(out))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and list(rows[0])[-4:] == LABELS
    t = Tagger(ckpt)
    res = t.tag_file(rows[0]["path"])
    assert [float(rows[0][x]) for x in LABELS] == pytest.approx(res.scores.tolist(), abs=1e-6)
    assert float(rows[0]["mtime"]) == os.stat(rows[0]["path"]).st_mtime
    _, _, err = _tag(capsys, str(library / "album1"), "-m", str(ckpt), "-o", str(out))
    assert "skipping 6 files" in err
    # another model with as many labels: the message says what differs, not "13 columns, expected 13"
    other = make_checkpoint(tmp_path / "other.safetensors", "test-slow-mel", labels=["a", "b", "c", "d"])
    before = out.read_bytes()
    code, _, err = _tag(capsys, str(library / "album1"), "-m", str(other), "-o", str(out))
    assert code == 2 and "the label names differ" in err and "rock, jazz, piano, ..." in err, err
    assert len(err.strip().splitlines()[-1]) < 300 and out.read_bytes() == before


def test_usage_errors_before_the_model_loads(capsys, ckpt, library, tmp_path):
    cases = [
        (["--output", str(tmp_path / "out.txt")], ".jsonl or .csv"),
        (["--force"], "needs output"),
        (["--output", str(tmp_path / "o.jsonl"), "--format", "json"], "suffix"),
        (["--output", str(tmp_path)], "is a folder"),
    ]
    for extra, message in cases:
        code, _, err = _tag(capsys, str(library), "-m", str(ckpt), *extra)
        assert code == 2 and message in err, (extra, err)
    assert _tag(capsys, str(library), "-m", str(ckpt), "-j", "0")[0] == 2


def _slow_run(args: list[str], slow_s: float) -> subprocess.Popen:
    code = "import sys; import audiocnn.testing.models; from audiocnn.cli.main import run; sys.exit(run(sys.argv[1:]))"
    env = {**os.environ, SLOW_ENV: str(slow_s), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, "tag", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_a_killed_run_resumes_to_the_records_of_an_uninterrupted_one(capsys, ckpt, library, tmp_path):
    full = tmp_path / "full.jsonl"
    _tag(capsys, str(library), "-m", str(ckpt), "-o", str(full))
    out = tmp_path / "killed.jsonl"
    proc = _slow_run([str(library), "-m", str(ckpt), "-o", str(out), "-j", "2"], slow_s=0.1)
    deadline = time.monotonic() + 60
    while _lines(out) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(workers) >= 2 or not Path("/proc/self").exists()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()], "decoding workers outlived their killed parent"
    kept = _lines(out)
    assert 4 <= kept < 13, f"the run was not killed part-way ({kept} records)"
    partial = _records(out)
    # a record cut short by a crash (the worst a kill can leave) is repaired on resume
    with out.open("ab") as fh:
        fh.write(b'{"path": "' + str(library).encode() + b"/album1/song")
    proc = _slow_run([str(library), "-m", str(ckpt), "-o", str(out), "-j", "2"], slow_s=0.0)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 1, err  # the broken file
    assert f"skipping {sum('error' not in r for r in partial.values())} files already in" in err
    assert "dropped 1 incomplete or invalid line" in err
    assert _records(out) == _records(full)


def test_parallel_decoding_gives_the_serial_results(capsys, ckpt, library):
    _, serial, _ = _tag(capsys, str(library / "album0"), "-m", str(ckpt), "-f", "json")
    code, parallel, err = _tag(capsys, str(library / "album0"), "-m", str(ckpt), "-f", "json", "-j", "2")
    assert code == 1 and "broken.wav" in err
    key = lambda line: json.loads(line)["path"]  # noqa: E731
    assert sorted(parallel.splitlines(), key=key) == sorted(serial.splitlines(), key=key)


def _peak_bytes(tagger: Tagger, files: list[Path], jobs: int) -> tuple[int, StreamStats]:
    counters = StreamStats()
    tracemalloc.start()
    try:
        for _ in tag_stream(tagger, files, jobs=jobs, stats=counters):
            pass
        return tracemalloc.get_traced_memory()[1], counters
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("jobs", [1, 2])
def test_memory_stays_flat_with_the_number_of_files(ckpt, tmp_path, jobs):
    """Peak memory of tagging 80 files is that of 20 (their decoded audio would take 15 MB);
    a 4-minute file is streamed in blocks, not held whole (it would take 7.7 MB at 8 kHz)."""
    lib = tmp_path / "many"
    files = [write_audio(lib / f"{i:03d}.wav", synth_tone(6.0, SR, seed=i), SR) for i in range(80)]
    long_song = write_audio(tmp_path / "long.wav", synth_tone(240.0, SR), SR)
    tagger = Tagger(ckpt, block_seconds=5.0)
    few, _ = _peak_bytes(tagger, files[:20], jobs)
    many, counters = _peak_bytes(tagger, files, jobs)
    assert counters.max_songs_in_flight <= jobs and counters.max_batch == 1
    assert many < min(1.5 * few + 200_000, 2_500_000), (few, many)
    long_peak, _ = _peak_bytes(tagger, [long_song], jobs)
    assert long_peak < 2_000_000, long_peak
    assert ResultsFile(tmp_path / "x.jsonl", LABELS).scan() == ({}, 0, 0)


@pytest.mark.parametrize("jobs", [1, 2])
def test_windows_of_several_songs_share_a_batch(ckpt, tmp_path, jobs):
    """Short songs (one or two windows each) fill batches of 4 together; every song still
    gets the scores tag_file gives it alone."""
    files = [write_audio(tmp_path / f"{i}.wav", synth_tone(0.6 + 0.5 * (i % 3), SR, seed=i), SR) for i in range(9)]
    tagger = Tagger(ckpt, batch_size=4)
    counters = StreamStats()
    results = {i: res for i, _, res in tag_stream(tagger, files, jobs=jobs, stats=counters)}
    assert sorted(results) == list(range(9))
    assert counters.max_songs_per_batch >= 3 and counters.max_batch == 4
    for i, f in enumerate(files):
        alone = tagger.tag_file(f)
        assert results[i].num_windows == alone.num_windows and results[i].padded == alone.padded
        assert np.allclose(results[i].scores, alone.scores, atol=1e-6)


@pytest.fixture
def two_torch_threads():
    """Torch with two threads for one test (this module runs with one), then back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _changing_song(path: Path, seconds: float, seed: int) -> Path:
    """Noise whose loudness rises through the song, so every window scores differently."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    return write_audio(path, (rng.standard_normal(n) * np.geomspace(0.01, 0.9, n)).astype(np.float32), SR)


class _Probe:
    """Wraps ``tagger.score``: records each batch's thread and torch thread count, and how
    many batches ran at once; ``delays`` (seconds, cycled) hold batches back."""

    def __init__(self, tagger: Tagger, delays: list[float]) -> None:
        self.run, self.delays = tagger.score, delays
        self.calls: list[tuple[str, int]] = []
        self.running = self.most = 0
        self.lock = threading.Lock()
        tagger.score = self

    def __call__(self, *args):
        with self.lock:
            delay = self.delays[len(self.calls) % len(self.delays)]
            self.calls.append((threading.current_thread().name, torch.get_num_threads()))
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(delay)
        try:
            return self.run(*args)
        finally:
            with self.lock:
                self.running -= 1


def test_cpu_jobs_run_batches_in_threads_sharing_the_cores(ckpt, tmp_path, two_torch_threads):
    """With -j 2 on a CPU two batches run at once, each on one of torch's two threads, and
    the songs get tag_file's scores; -j 1 runs them here on both threads."""
    files = [_changing_song(tmp_path / f"{i}.wav", 4.0 + i, seed=i) for i in range(4)]
    tagger = Tagger(ckpt)
    assert [tagger.streams_for(j) for j in (1, 2, 3)] == [1, 2, 2]
    alone = [tagger.tag_file(f, taggram=True) for f in files]
    probe = _Probe(tagger, [0.02])
    results = {i: res for i, _, res in tag_stream(tagger, files, jobs=2, taggram=True)}
    assert probe.most == 2 and len(probe.calls) == sum(a.num_windows for a in alone)
    assert {name.startswith("audiocnn-network") for name, _ in probe.calls} == {True}
    assert {threads for _, threads in probe.calls} == {1}
    assert torch.get_num_threads() == 2  # given back when the run ends
    for i, a in enumerate(alone):
        assert np.allclose(results[i].taggram, a.taggram, atol=1e-6)
    probe.calls.clear()
    probe.most = 0
    list(tag_stream(tagger, files, jobs=1))
    assert probe.most == 1 and {threads for _, threads in probe.calls} == {2}
    assert {name for name, _ in probe.calls} == {threading.main_thread().name}


def test_batches_finishing_out_of_order_keep_each_song_in_order(ckpt, tmp_path, two_torch_threads):
    """Every other batch is held back so the next one finishes first: each song's
    per-window scores still come in window order."""
    files = [_changing_song(tmp_path / f"{i}.wav", 6.0, seed=i) for i in range(3)]
    tagger = Tagger(ckpt)
    alone = [tagger.tag_file(f, taggram=True).taggram for f in files]
    assert all(np.abs(np.diff(t, axis=0)).min() > 1e-4 for t in alone)  # windows tell apart
    _Probe(tagger, [0.05, 0.0])
    results = {i: res for i, _, res in tag_stream(tagger, files, jobs=2, taggram=True)}
    for i, want in enumerate(alone):
        assert np.allclose(results[i].taggram, want, atol=1e-6)


def _non_utf8_library(root: Path) -> tuple[Path, str]:
    """Three songs, the middle one named ``bad\\xff\\xfe.wav`` (valid on Linux, not UTF-8)."""
    for name, seed in (("a.wav", 1), ("bad.wav", 2), ("c.wav", 3)):
        write_audio(root / name, synth_tone(1.5, SR, seed=seed), SR)
    bad = os.fsdecode(os.fsencode(root) + b"/bad\xff\xfe.wav")  # held as surrogate escapes
    os.rename(root / "bad.wav", os.fsencode(bad))
    return root, bad


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_name_that_is_not_utf8_is_tagged_recorded_and_skipped_on_resume(capsys, ckpt, tmp_path, suffix):
    lib, bad = _non_utf8_library(tmp_path / "lib")
    out = tmp_path / f"out{suffix}"
    code, _, err = _tag(capsys, str(lib), "-m", str(ckpt), "-o", str(out))
    assert code == 0 and "tagged 3 of 3 files" in err, err
    assert "bad\\xff\\xfe.wav" in err  # shown with its bytes escaped
    if suffix == ".jsonl":
        out.read_bytes().decode("utf-8")  # the file stays valid UTF-8: JSON escapes \udcff\udcfe
        paths = list(_records(out))
    else:  # a CSV row holds the name's own bytes
        paths = [row[0] for row in csv.reader(out.open(encoding="utf-8", errors="surrogateescape"))][1:]
    assert paths == [str(lib / "a.wav"), bad, str(lib / "c.wav")]
    assert os.fsencode(paths[1]).endswith(b"/bad\xff\xfe.wav")
    code, _, err = _tag(capsys, str(lib), "-m", str(ckpt), "-o", str(out))
    assert code == 0 and "skipping 3 files already in" in err and "dropped" not in err, err


def test_plain_tag_of_a_non_utf8_name_prints_valid_json(capsys, ckpt, tmp_path):
    _, bad = _non_utf8_library(tmp_path / "lib")
    code, out, err = _tag(capsys, bad, "-m", str(ckpt), "-f", "json")
    assert code == 0, err
    assert os.fsencode(json.loads(out)["path"]) == os.fsencode(bad)


def _strict_json(line: str):
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_huge_samples_are_an_error_for_that_file_and_the_json_stays_valid(capsys, tmp_path, jobs):
    """Float samples of 1e30 overflow the front-end: the scores would be NaN."""
    wave = make_checkpoint(tmp_path / "wave.safetensors", "test-probe-wave", labels=LABELS)
    huge = write_audio(tmp_path / "huge.wav", np.full(3 * SR, 1e30, np.float32), SR, subtype="FLOAT")
    fine = write_audio(tmp_path / "fine.wav", synth_tone(3.0, SR), SR)
    code, out, err = _tag(capsys, str(huge), str(fine), "-m", str(wave), "-f", "json", "-j", jobs)
    assert code == 1 and "huge.wav: the model's scores are not finite" in err and "Traceback" not in err
    assert [_strict_json(line)["path"] for line in out.splitlines()] == [str(fine)]
    results = tmp_path / "lib.jsonl"
    assert _tag(capsys, str(huge), str(fine), "-m", str(wave), "-o", str(results), "-j", jobs)[0] == 1
    recs = {Path(p).name: r for p, r in _records(results).items()}
    assert "not finite" in recs["huge.wav"]["error"] and "tags" in recs["fine.wav"]
    for line in results.read_text().splitlines():
        _strict_json(line)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        # a copy of a dataset's manifest: was "dropped 1 incomplete or invalid line(s)", header deleted
        ("manifest.jsonl", '{"type": "header", "name": "m"}\n{"type": "clip", "id": "a", "path": "a.wav"}\n'),
        ("notes.jsonl", "my own notes, no newline at the end"),  # was truncated to nothing
        ("mine.csv", "path,rating\n/music/a.wav,5\n"),
    ],
)
def test_an_output_that_is_not_a_results_file_is_refused_untouched(capsys, ckpt, library, tmp_path, name, text):
    out = tmp_path / name
    out.write_text(text)
    code, _, err = _tag(capsys, str(library / "album1"), "-m", str(ckpt), "-o", str(out))
    assert code == 2 and "not an audiocnn results file" in err and "refusing to rewrite it" in err, err
    assert "loaded" not in err  # refused before the model loads
    assert out.read_text() == text


def test_a_results_file_from_before_the_header_is_resumed_and_marked(capsys, ckpt, library, tmp_path):
    out = tmp_path / "old.jsonl"
    assert _tag(capsys, str(library / "album1"), "-m", str(ckpt), "-o", str(out))[0] == 0
    recs = _records(out)
    out.write_bytes(out.read_bytes().split(b"\n", 1)[1])  # what audiocnn wrote before the header line
    code, _, err = _tag(capsys, str(library / "album1"), "-m", str(ckpt), "-o", str(out))
    assert code == 0 and "skipping 6 files" in err, err
    assert _records(out) == recs  # and the header is back


def test_a_full_disk_while_appending_removes_the_partial_record(capsys, ckpt, library, tmp_path, monkeypatch):
    out = tmp_path / "full.jsonl"
    real_write = ResultsFile._write
    calls = []

    def write(self, data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 3:  # the header, one record, then half of the next and the disk is full
            real_write(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(self, data)

    monkeypatch.setattr(ResultsFile, "_write", write)
    code, _, err = _tag(capsys, str(library / "album1"), "-m", str(ckpt), "-o", str(out))
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: ") and "No space left on device" in last and "Traceback" not in err
    assert out.read_bytes().endswith(b"}\n") and len(_records(out)) == 1  # no partial line left


def test_a_second_run_is_refused_before_the_model_loads(capsys, ckpt, library, tmp_path):
    out = tmp_path / "busy.jsonl"
    with held_lock(tmp_path / ".busy.jsonl.lock", lambda pid: UsageError("busy")):
        code, _, err = _tag(capsys, str(library / "album1"), "-m", str(ckpt), "-o", str(out))
    assert code == 2 and "is tagging into it now" in err and "loaded" not in err, err


def test_a_symlinked_output_stays_a_link_to_the_rewritten_file(capsys, ckpt, library, tmp_path):
    real = tmp_path / "real.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert _tag(capsys, str(library / "album1"), "-m", str(ckpt), "-o", str(link))[0] == 0
    with real.open("ab") as fh:
        fh.write(b'{"path": "cut short by a crash')  # the next run repairs (rewrites) the file
    code, _, err = _tag(capsys, str(library / "album1"), "-m", str(ckpt), "-o", str(link))
    assert code == 0 and "dropped 1 incomplete" in err
    assert link.is_symlink() and len(_records(real)) == 6


def test_jobs_beyond_the_cores_are_capped_with_one_line(capsys, ckpt, library, monkeypatch):
    """-j 64 on 2 cores started 64 decoding processes (2.3 GB, 6x slower than -j 1)."""
    cores = max(2, len(os.sched_getaffinity(0)))
    asked = []

    def stream(tagger, files, *, jobs, **kw):
        asked.append(jobs)
        assert jobs <= cores, f"{jobs} decoding processes on {cores} cores"  # before any starts
        return tag_stream(tagger, files, jobs=jobs, **kw)

    monkeypatch.setattr(command, "tag_stream", stream)
    code, _, err = _tag(capsys, str(library / "album1"), "-m", str(ckpt), "-f", "json", "-j", str(cores + 62))
    assert code == 0 and asked == [cores] and f"--jobs {cores + 62}: using {cores}, the CPU cores" in err, err
