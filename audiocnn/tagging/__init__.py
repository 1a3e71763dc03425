"""Tagging whole songs with a trained or pretrained model.

- :mod:`~audiocnn.tagging.tagger`: :class:`Tagger` (load a checkpoint once, stream a song
  in blocks, cut windows, batch them, aggregate), :class:`TagResult`.
- :mod:`~audiocnn.tagging.outputs`: JSON/CSV result lines, taggram and embedding files.
- :mod:`~audiocnn.tagging.command`: :func:`tag_command`, all of ``audiocnn tag`` as one
  call (paths, folders and globs in; outputs, failures and a summary out).
- :mod:`~audiocnn.tagging.stream`: :func:`~audiocnn.tagging.stream.tag_stream`, many
  songs as one stream (decoding workers, shared batches).
- :mod:`~audiocnn.tagging.library`: the resumable results file of ``tag --output``.
- :mod:`~audiocnn.tagging.export`: ONNX export and its checks; ``onnx_backend``: ``tag
  --backend onnxruntime``.

Example::

    from audiocnn.tagging import Tagger
    print(Tagger("musicnn-mtt").tag_file("song.mp3", top_k=5).tags)
"""

from audiocnn.tagging.command import TagOutcome, TagSummary, expand_audio_paths, tag_command
from audiocnn.tagging.outputs import (
    ResultWriter,
    output_stem,
    result_csv_row,
    results_csv_header,
    write_embeddings,
    write_taggram,
)
from audiocnn.tagging.tagger import StreamStats, Tagger, TagResult, WindowPlan

__all__ = [
    "ResultWriter",
    "StreamStats",
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
    "write_embeddings",
    "write_taggram",
]
