"""Safe checkpoint loading: ``weights_only`` stays on, the types fairseq checkpoints hold are allow-listed.

torch >= 2.6 loads with ``weights_only=True``; fairseq checkpoints pickle an ``argparse.Namespace``
(the model/task arguments), possibly numpy scalars in metric state, and OmegaConf containers where fairseq
moves a loaded checkpoint between processes. Only those data types are added: no callable that runs code.
"""

import argparse
import copy
import os

import numpy as np
import torch


def _numpy_scalar_types():
    # numpy >= 2 moved ``core`` to ``_core``; checkpoints written by either name the one they had
    types = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            types.append(__import__(module, fromlist=["scalar"]).scalar)
        except (ImportError, AttributeError):
            pass
    return types


def _omegaconf_types():
    # fairseq's data-parallel training loads a checkpoint on rank 0 and broadcasts it (cfg now an OmegaConf
    # DictConfig) through torch.save/torch.load; some fairseq versions pickled a DictConfig cfg directly
    import collections
    import typing

    from fairseq.distributed.utils import _TensorPlaceholder  # tensors travel beside the pickle, by index
    from omegaconf import DictConfig, ListConfig, base, nodes

    return [_TensorPlaceholder, DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, nodes.AnyNode, nodes.StringNode,
            nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode, typing.Any, collections.defaultdict,
            dict, list, int]


CHECKPOINT_TYPES = [argparse.Namespace, *_numpy_scalar_types(), *_omegaconf_types()]


def allow_checkpoint_types() -> None:
    """Allow-list what fairseq checkpoints hold for torch's weights_only unpickler."""
    if hasattr(torch.serialization, "add_safe_globals"):  # torch >= 2.4
        torch.serialization.add_safe_globals(CHECKPOINT_TYPES)


class CheckpointError(ValueError):
    """A path that is not a loadable fairseq checkpoint; the message is one line for the user."""


def load_checkpoint(path: str) -> dict:
    """fairseq's ``load_checkpoint_to_cpu`` with one-line errors for missing, broken or unsafe files."""
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as e:  # the unpickler raises anything from IndexError to UnpicklingError
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        blocked = next((line for line in lines if "GLOBAL" in line), None)
        if blocked:  # the weights_only unpickler met a type outside the allow-list
            blocked = blocked.split("WeightsUnpickler error:")[-1].strip()
            raise CheckpointError(
                f"{path}: refused: it holds a type that is not allow-listed for safe "
                f"(weights_only) loading: {blocked}"
            ) from None
        detail = next((line for line in lines if "Weights only load failed" not in line), "truncated or corrupt")
        raise CheckpointError(f"{path}: not a readable fairseq checkpoint ({type(e).__name__}: {detail})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state)")
    return state


def model_args(state: dict) -> argparse.Namespace:
    """The model's argument namespace from a checkpoint of either fairseq era.

    Dataclass models (``transformer_lm``) store a config mapping; it becomes a namespace with ``arch`` set."""
    from omegaconf import OmegaConf

    cfg = state.get("cfg")
    args = cfg["model"] if cfg is not None else state.get("args")
    if OmegaConf.is_config(args):
        args = OmegaConf.to_container(args, resolve=True, enum_to_str=True)
    if isinstance(args, dict):
        args = argparse.Namespace(**args)
        args.arch = getattr(args, "arch", None) or args._name
    if not isinstance(args, argparse.Namespace):
        raise CheckpointError("checkpoint has no model arguments")
    return args


def vocabulary_size(model_state: dict, stack: str):
    """Rows of ``stack``'s token embedding (dense, or factorized: ``embed_tokens.up``); None without one."""
    for key in (f"{stack}.embed_tokens.weight", f"{stack}.embed_tokens.up.weight"):
        if key in model_state:
            return model_state[key].size(0)
    return None


class _ShapeTask:
    """The two dictionaries a fairseq model is built from, sized as the checkpoint's embeddings."""

    def __init__(self, model_state):
        from fairseq.data import Dictionary

        def sized(n):
            d = Dictionary()
            while len(d) < n:
                d.add_symbol(f"madeupword{len(d):06d}")
            return d

        tgt = vocabulary_size(model_state, "decoder")
        src = vocabulary_size(model_state, "encoder") or tgt
        self.source_dictionary = sized(src)
        self.target_dictionary = self.source_dictionary if src == tgt else sized(tgt)


def build_model_from_state(state: dict, task=None):
    """The checkpoint's model with its trained weights, in fp32 eval mode.

    ``task`` provides the dictionaries; without one they are sized from the embeddings, so no data
    directory is needed (enough to factorize or count parameters, not to check the vocabulary).
    """
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
    from fairseq.models.transformer import TransformerModel
    from fairseq.models.transformer_lm import TransformerLanguageModel

    args, model_state = model_args(state), state["model"]
    arch = getattr(args, "arch", None) or getattr(args, "_name", None)
    model_cls = ARCH_MODEL_REGISTRY.get(arch)
    if model_cls is None or not issubclass(model_cls, (TransformerModel, TransformerLanguageModel)):
        raise CheckpointError(f"arch {arch!r} is not a fairseq Transformer (encoder-decoder, BART or transformer_lm)")
    stack = "decoder" if issubclass(model_cls, TransformerLanguageModel) else "encoder"
    if vocabulary_size(model_state, stack) is None:
        raise CheckpointError(f"arch {arch!r}: the checkpoint has no {stack}.embed_tokens.weight")
    args = copy.deepcopy(args)
    ARCH_CONFIG_REGISTRY[arch](args)
    model = model_cls.build_model(args, task or _ShapeTask(model_state))
    state = {k: v for k, v in model_state.items() if not k.startswith("classification_heads.")}
    model.load_state_dict(state, strict=True)
    return model.float().eval()
