"""Inference preparation of a factorized model (``make_generation_fast_``): fewer and larger matrix products.

- A factorized matrix of rank ``r ≥ d_in·d_out / (d_in + d_out)`` (at or past break-even) costs at least the dense
  matrix, so ``merge_past_break_even_`` replaces it by the dense layer of ``up·down``.
- The projections of an attention module that read one input (q, k and v of self-attention; k and v of
  cross-attention) share one down-projection product: with downs ``D_i`` (r_i x d_in) stacked as
  ``D = [D_q; D_k; D_v]`` (Σ r_i x d_in), ``x Dᵀ`` is split back into the ``x D_iᵀ`` (``share_inputs_``).

Sharing changes neither parameters nor state_dict keys: every projection keeps its own ``up`` and ``down``, the
stacked ``D`` is a copy made again whenever one of them changes, and with gradients enabled (training) each
projection runs its own two factors, so a prepared model trains and saves exactly as the unprepared one.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import LowRankEmbedding, LowRankLinear
from .surgery import _replace


def merge_past_break_even_(model: nn.Module) -> List[str]:
    """Inference: replace each ``LowRankLinear`` (and ``LowRankEmbedding``) past break-even by the dense layer of its
    product, in place; uses that shared factors share the dense weight.

    Such factors are no cheaper than the dense matrix, so the dense one is at least as fast. An attention
    module left with no factorized projection goes back to fairseq's fused path. Returns the merged paths.
    """
    from fairseq.modules import MultiheadAttention

    factored = [(n, m) for n, m in model.named_modules(remove_duplicate=False)
                if isinstance(m, (LowRankLinear, LowRankEmbedding)) and m.past_break_even]
    dense: Dict[int, nn.Parameter] = {}  # id(up) -> the merged weight
    done: Dict[int, nn.Module] = {}  # a module used at two paths gets one replacement
    for name, m in factored:
        if id(m) in done:
            _replace(model, name, done[id(m)])
            continue
        weight = dense.setdefault(id(m.up), nn.Parameter((m.up.weight @ m.down.weight).detach()))
        if isinstance(m, LowRankLinear):
            new = nn.Linear(m.in_features, m.out_features, bias=m.up.bias is not None)
            new.weight = weight
            if m.up.bias is not None:
                new.bias = m.up.bias
        else:
            new = nn.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx)
            new.weight = weight
        _replace(model, name, done.setdefault(id(m), new.to(device=weight.device, dtype=weight.dtype)))
    for parent in {model.get_submodule(n.rpartition(".")[0]) for n, _ in factored}:
        if isinstance(parent, MultiheadAttention) and not any(
            isinstance(c, LowRankLinear) for c in parent.children()
        ):
            parent.skip_embed_dim_check = False  # undo factorize_'s switch: all dense again
    return [n for n, _ in factored]


class SharedDown(nn.Module):
    """The down-projections of factorized matrices that read the same input, as one matrix product (no gradients).

    Holds no parameter: ``weight()`` is the members' ``down.weight``s stacked (Σ r_i x d_in), a copy kept until
    one of them changes (another tensor, dtype, device, or an in-place update such as ``load_state_dict`` or an
    optimizer step). ``parts(x)`` returns every member's ``down(x)``; a second member called with the very same
    tensor (as fairseq's attention calls q, k and v) reuses the product instead of multiplying again. The input is
    held, so a new tensor can never be mistaken for it."""

    def __init__(self, downs: List[nn.Linear]):
        super().__init__()
        self.downs = tuple(downs)  # a tuple, not submodules: each stays the parameter of its own projection
        self.sizes = [d.out_features for d in downs]
        self._key = self._weight = self._input = self._used = self._parts = None

    def weight(self) -> Tensor:
        weights = [d.weight for d in self.downs]
        key = tuple((w.data_ptr(), w.device, w.dtype, w._version) for w in weights)  # _version: in-place writes
        if key != self._key:
            with torch.no_grad():
                self._key, self._weight = key, torch.cat(weights)
        return self._weight

    def parts(self, x: Tensor) -> Tuple[Tensor, ...]:
        weight = self.weight()
        if x is not self._input or weight is not self._used:
            self._input, self._used, self._parts = x, weight, F.linear(x, weight).split(self.sizes, dim=-1)
        return self._parts

    def extra_repr(self) -> str:
        return f"ranks={self.sizes}"


class SharedInputLowRankLinear(nn.Module):
    """A ``LowRankLinear`` whose down-projection, without gradients, is one part of a ``SharedDown`` product.

    Its parameters are the ``LowRankLinear``'s own ``up`` and ``down`` (same state_dict keys); with gradients
    enabled it runs them as the ``LowRankLinear`` did, so training after preparation updates every factor."""

    def __init__(self, layer: LowRankLinear, shared: SharedDown, index: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = layer.in_features, layer.out_features, layer.rank
        self.up, self.down, self.index = layer.up, layer.down, index
        self.shared = [shared]  # a list: the owner of the SharedDown is the attention module, not each projection

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.up(self.down(x))
        return self.up(self.shared[0].parts(x)[self.index])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, shared down #{self.index}"


def share_inputs_(model: nn.Module) -> List[str]:
    """Inference: in each attention module, the factorized projections that read one input (q, k and v of
    self-attention; k and v of cross-attention, once per source) get one down-projection product. Returns the
    attention modules changed. Outputs are those of the separate factors, up to float rounding."""
    from fairseq.modules import MultiheadAttention

    changed = []
    for name, module in model.named_modules():
        if not isinstance(module, MultiheadAttention):
            continue
        names = ("q_proj", "k_proj", "v_proj") if module.self_attention else (
            ("k_proj", "v_proj") if module.encoder_decoder_attention else ())
        group = [n for n in names if isinstance(getattr(module, n), LowRankLinear)]
        if len(group) < 2:
            continue
        module.shared_down = SharedDown([getattr(module, n).down for n in group])
        for i, n in enumerate(group):
            setattr(module, n, SharedInputLowRankLinear(getattr(module, n), module.shared_down, i))
        changed.append(name)
    return changed
