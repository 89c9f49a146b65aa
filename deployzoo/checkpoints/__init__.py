"""Safe checkpoint reading and strict mapping onto deployzoo models."""
from deployzoo.checkpoints.remap import MappingEntry, MappingReport, RenameRules, load_into_model, remap_state_dict
from deployzoo.checkpoints.safe_load import RawCheckpoint, load_checkpoint

__all__ = [
    "MappingEntry",
    "MappingReport",
    "RawCheckpoint",
    "RenameRules",
    "load_checkpoint",
    "load_into_model",
    "remap_state_dict",
]
