"""Tagging whole songs with a trained or pretrained model.

- :mod:`~audiocnn.tagging.options`: :class:`TagOptions`, every option of a tagging run.
- :mod:`~audiocnn.tagging.tagger`: :class:`Tagger` (load a checkpoint once, plan the
  windows, aggregate a song's scores); :mod:`~audiocnn.tagging.backends`: what runs the
  network (torch, ONNX Runtime).
- :mod:`~audiocnn.tagging.song`: one song being scored (:class:`~audiocnn.tagging.song.Song`),
  how it is cut into windows, :class:`TagResult`.
- :mod:`~audiocnn.tagging.outputs`: JSON/CSV result lines, taggram, embedding and
  attention files.
- :mod:`~audiocnn.tagging.command`: :func:`tag_command`, all of ``audiocnn tag`` as one
  call (paths, folders and globs in; outputs, failures and a summary out).
- :mod:`~audiocnn.tagging.stream`: :func:`~audiocnn.tagging.stream.tag_stream`, songs as
  one stream (decoding workers, shared batches): the one way a song is scored.
- :mod:`~audiocnn.tagging.results`: the resumable results file of a music library.
- :mod:`~audiocnn.tagging.export`: ONNX export and its checks.

Example::

    from audiocnn.tagging import Tagger
    print(Tagger("musicnn-mtt").tag_file("song.mp3", top_k=5).tags)
"""

from audiocnn.tagging.command import TagOutcome, TagSummary, expand_audio_paths, tag_command
from audiocnn.tagging.options import TagOptions
from audiocnn.tagging.outputs import (
    ResultWriter,
    output_stem,
    result_csv_row,
    results_csv_header,
    write_attention,
    write_embeddings,
    write_taggram,
)
from audiocnn.tagging.song import StreamStats, TagResult, WindowPlan
from audiocnn.tagging.tagger import Tagger

__all__ = [
    "ResultWriter",
    "StreamStats",
    "TagOptions",
    "TagOutcome",
    "TagResult",
    "TagSummary",
    "Tagger",
    "WindowPlan",
    "expand_audio_paths",
    "output_stem",
    "result_csv_row",
    "results_csv_header",
    "tag_command",
    "write_attention",
    "write_embeddings",
    "write_taggram",
]
