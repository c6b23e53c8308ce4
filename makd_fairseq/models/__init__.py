from . import lowrank_transformer  # noqa: F401
