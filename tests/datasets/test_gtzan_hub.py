"""GTZAN's live home: the default remote is the copy on Hugging Face (the original host is
offline since 2022); the download follows the Hub's redirect, resumes across it and checks
the original md5."""

from __future__ import annotations

from dataclasses import replace

from audiocnn.datasets import get_dataset
from audiocnn.datasets.prepare import prepare_dataset
from audiocnn.testing.archives import digest
from audiocnn.testing.datasets import gtzan_fixture


def test_gtzan_downloads_from_hugging_face_through_its_redirect_with_the_same_md5(
    http_server,
    data_dir,
    monkeypatch,
):
    (remote,) = get_dataset("gtzan").remotes
    assert remote.url == "https://huggingface.co/datasets/marsyas/gtzan/resolve/main/data/genres.tar.gz"
    assert (remote.checksum, remote.algorithm) == ("5b3d6dddb579ab49814ab86dba69e7c7", "md5")  # the original's
    fx = gtzan_fixture("au")
    data = fx.files["genres.tar.gz"]
    resolve = "/datasets/marsyas/gtzan/resolve/main/data/genres.tar.gz"
    http_server.add(resolve, b"", mode="redirect-to:/cdn/genres.tar.gz")  # as the Hub answers
    http_server.add("/cdn/genres.tar.gz", data, mode="drop-once")  # and a connection lost half way
    fixture = replace(remote, url=http_server.base_url + resolve, checksum=digest(data, "md5"))
    monkeypatch.setattr(type(get_dataset("gtzan")), "remotes", (fixture,))
    manifest = prepare_dataset("gtzan", data_dir, jobs=1, progress=False)
    assert len(manifest.clips) > 0
    served = [(r["path"], r["status"]) for r in http_server.requests]
    assert served[:2] == [(resolve, 302), ("/cdn/genres.tar.gz", 200)] and served[-1] == ("/cdn/genres.tar.gz", 206)
