"""Model zoo behind one registry (importing the package registers every family)."""

from audiocnn.models.base import ModelSpec, TaggingModel, logits_to_proba
from audiocnn.models.registry import TASKS, create_model, get_model_class, list_models, register_model

# the zoo: each family module registers its models on import
from audiocnn.models import attention, crnn, fcn, harmonic, musicnn, samplecnn, shortchunk, vgg  # noqa: E402,F401  isort: skip

__all__ = [
    "TASKS",
    "ModelSpec",
    "TaggingModel",
    "create_model",
    "get_model_class",
    "list_models",
    "logits_to_proba",
    "register_model",
]
