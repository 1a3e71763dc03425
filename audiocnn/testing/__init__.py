"""Helpers for audiocnn's tests and benchmarks (like ``numpy.testing``): synthetic audio,
fixture archives in each dataset's real layout, a real HTTP server on 127.0.0.1, tiny
registered models, tiny training runs, the learning checks' data, and child processes
run under memory and time limits.

Nothing else in audiocnn imports this package (tests/test_architecture.py checks it);
it may import any part of audiocnn. Import the module you need, e.g.
``from audiocnn.testing.audio import synth_tone``:

- ``audio``: synthetic tones, written or encoded (:func:`audio.synth_tone`, :func:`audio.write_audio`,
  :func:`audio.audio_bytes`)
- ``archives``: tar and zip bytes, digests, multi-part splits, files written from a dict
- ``datasets``, ``tag_datasets``: fixture files in the layouts of GTZAN, MagnaTagATune, FMA,
  a folder, MTG-Jamendo and the Million Song Dataset, and the patches that pin their digests
- ``server``: :class:`server.FixtureServer`, an HTTP server on 127.0.0.1 with faults on demand
- ``models``: tiny registered models (``test-*``) and checkpoints; importing it registers them
- ``training``: tiny prepared datasets, configs and training runs
- ``learning_data``, ``learning_checks``: the learning checks' synthetic instruments and runs
- ``commands``: `audiocnn` commands in this process or in a limited child; their error line
- ``processes``: :func:`processes.run_limited` (a child Python under memory, file-size and
  time limits) and /proc helpers
- ``faults``: a folder that is not writable, a disk that fills (through ``monkeypatch``)
"""
