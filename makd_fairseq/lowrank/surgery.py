"""Model surgery: find a model's target matrices by name and swap each for its factors, in place.

Modules are swapped by name (``encoder.layers.0.fc1``); fairseq's model code is not edited. Uses that share one
weight (fairseq's ``--share-all-embeddings``, ``--share-decoder-input-output-embed``) stay shared: they are one
target, named by the output projection, and every use becomes a view of the same two factors.
"""

import fnmatch
import json
from typing import Dict, Iterable, List, Optional, Tuple

from torch import nn

from .factorization import Factorization, RankError
from .layers import LowRankEmbedding, LowRankLinear

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
VOCABULARY_TARGETS = ("embed_tokens", "output_projection")  # opt-in: --targets ...,embed_tokens,output_projection


def shared_uses(model: nn.Module, name: str) -> List[str]:
    """The other paths that use the weight of the matrix ``name`` (tied embeddings / output projection)."""
    uses = _weighted(model)
    return [n for n, m in uses.items() if m.weight is uses[name].weight and n != name]


def _weighted(model: nn.Module) -> Dict[str, nn.Module]:
    """Every use (path) of a target-able module: Linear layers of the encoder/decoder, and token embeddings."""
    return {name: m for name, m in model.named_modules(remove_duplicate=False)
            if name.startswith(("encoder.", "decoder."))
            and (isinstance(m, nn.Linear) or (isinstance(m, nn.Embedding) and name.endswith(".embed_tokens")))}


def find_targets(model: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS) -> Dict[str, nn.Module]:
    """Matrices of the encoder/decoder matched by ``targets``: Linear layers, and token embeddings (``embed_tokens``).

    A pattern without a dot names the module's own attribute (``fc1``); a pattern with dots is
    an fnmatch over the full name (``decoder.layers.*.fc1``). Uses of one shared weight (tied embeddings and output
    projection) are one target, named by its first Linear use (``decoder.output_projection``), matched by any use.
    """
    uses: Dict[int, List[Tuple[str, nn.Module]]] = {}
    for name, module in _weighted(model).items():
        uses.setdefault(id(module.weight), []).append((name, module))
    found = {}
    for group in uses.values():
        def matched(name):
            leaf = name.rsplit(".", 1)[-1]
            return any(fnmatch.fnmatchcase(name if "." in p else leaf, p) for p in targets)

        if any(matched(name) for name, _ in group):
            name, module = next(((n, m) for n, m in group if isinstance(m, nn.Linear)), group[0])
            found[name] = module
    return found


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def factorize_(model: nn.Module, ranks: Dict[str, int], facts: Optional[Dict[str, Factorization]] = None) -> nn.Module:
    """Replace each matrix named in ``ranks`` by its factors (``facts[name]``, default the truncated SVD), in place:
    a Linear by a ``LowRankLinear``, a token embedding by a ``LowRankEmbedding``; every use of a shared weight by
    views of the same two factors."""
    from fairseq.modules import MultiheadAttention

    modules, uses = dict(model.named_modules()), _weighted(model)
    for name, rank in ranks.items():
        target = modules.get(name)
        if not isinstance(target, (nn.Linear, nn.Embedding)) or name not in uses:
            raise RankError(f"{name} is not a Linear layer or token embedding of this model")
        if rank > min(target.weight.shape):
            raise RankError(f"rank {rank} for {name} exceeds min(d_out, d_in)={min(target.weight.shape)}")
        layer = LowRankLinear.from_linear(target, rank, (facts or {}).get(name))
        new: Dict[int, nn.Module] = {}  # a module used at two paths (shared embeddings) stays one module
        for path, module in uses.items():
            if module.weight is target.weight:
                _replace(model, path, new.setdefault(id(module), layer if isinstance(module, nn.Linear) else
                                                     LowRankEmbedding(layer, module.padding_idx)))
    for module in model.modules():
        if isinstance(module, MultiheadAttention) and any(
            isinstance(c, LowRankLinear) for c in module.children()
        ):
            # the fused path reads q_proj.weight etc. directly; make attention call the modules
            module._set_skip_embed_dim_check()
    return model


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


def dumps_ranks(ranks: Dict[str, int]) -> str:
    return json.dumps(ranks, sort_keys=True, separators=(",", ":"))
