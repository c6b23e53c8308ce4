"""``lowrank_transformer_lm``: fairseq's decoder-only ``transformer_lm`` with its target projections factorized.

Ranks come from the same places as for ``lowrank_transformer`` (see there). Every ``transformer_lm`` preset has a
``lowrank_`` twin (``lowrank_transformer_lm_gpt``, ...): the dense preset fills its defaults, ours the rest.
"""

from dataclasses import dataclass
from typing import Optional

from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_INV_REGISTRY, register_model, register_model_architecture
from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig
from omegaconf import II

from ..student import shape_from_student
from .lowrank_transformer import LowRankConfig, LowRankMixin, lowrank_defaults, preset


@dataclass
class LowRankTransformerLanguageModelConfig(TransformerLanguageModelConfig, LowRankConfig):
    """``transformer_lm``'s config with ``LowRankConfig``'s rank fields."""

    # the model config only sees its own fields: the student checkpoint to read ranks from
    finetune_from_model: Optional[str] = II("checkpoint.finetune_from_model")


@register_model("lowrank_transformer_lm", dataclass=LowRankTransformerLanguageModelConfig)
class LowRankTransformerLanguageModel(LowRankMixin, TransformerLanguageModel):
    """A decoder-only Transformer LM whose chosen Linear layers are ``LowRankLinear``."""


# The base arch ``lowrank_transformer_lm`` gets its defaults from the dataclass, as ``transformer_lm`` does, after the
# arch function: fairseq parses a dataclass model's flags without defaults, so the fields the command line leaves
# unset are still unset here and a student named by --finetune-from-model fills them (register_model's no-op replaced)
ARCH_CONFIG_REGISTRY["lowrank_transformer_lm"] = shape_from_student
for _name in list(ARCH_MODEL_INV_REGISTRY["transformer_lm"]):
    if _name != "transformer_lm":
        register_model_architecture("lowrank_transformer_lm", "lowrank_" + _name)(
            preset(ARCH_CONFIG_REGISTRY[_name], lowrank_defaults))
