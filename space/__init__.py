"""What can be built: SCSA, the attention slots of timm backbones, ArchConfig, the search space, build_model.

Knows nothing of searching, data or training; imports only torch and timm.
"""

from .build import build_model
from .config import ArchConfig, StageConfig
from .space import SearchSpace, StageChoices

__all__ = ["ArchConfig", "SearchSpace", "StageChoices", "StageConfig", "build_model"]
