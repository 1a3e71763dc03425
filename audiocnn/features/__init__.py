"""Feature front-ends and their configs.

Importing the package loads no torch: it gives the configs
(:mod:`audiocnn.features.configs`); the torch modules that compute them are in
:mod:`audiocnn.features.frontends` (``MelFrontend``, ``WaveformFrontend``,
``build_frontend``), and :mod:`audiocnn.features.streaming` runs a mel front-end over a
long signal block by block. The on-disk feature store is the subpackage
:mod:`audiocnn.features.store`, a layer above the front-ends: it is not imported here
either.
"""

from audiocnn.features.configs import FrontendConfig, MelConfig, WaveformConfig, config_from_dict, config_hash

__all__ = ["FrontendConfig", "MelConfig", "WaveformConfig", "config_from_dict", "config_hash"]
