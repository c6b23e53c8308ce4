from . import lowrank_transformer, lowrank_transformer_lm  # noqa: F401
