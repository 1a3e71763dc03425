"""Feature front-ends (torch modules) and their configs.

The on-disk feature store is the subpackage :mod:`audiocnn.features.store`, a layer above
the front-ends: it is not imported here, so ``from audiocnn.features import MelConfig``
does not load it.
"""

from audiocnn.features.frontends import (
    FrontendConfig,
    MelConfig,
    MelFrontend,
    WaveformConfig,
    WaveformFrontend,
    build_frontend,
    config_from_dict,
    config_hash,
)

__all__ = [
    "FrontendConfig",
    "MelConfig",
    "MelFrontend",
    "WaveformConfig",
    "WaveformFrontend",
    "build_frontend",
    "config_from_dict",
    "config_hash",
]
