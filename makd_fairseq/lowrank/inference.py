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

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
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


# ---------------------------------------------------------------- the latent self-attention cache

def _input_side(proj: nn.Module, x: Tensor) -> Tensor:
    """What a projection's last matrix reads: ``down(x)`` of a factorized one (from the shared product when it has
    one), ``x`` itself for a dense one."""
    if isinstance(proj, SharedInputLowRankLinear):
        return proj.shared[0].parts(x)[proj.index]
    if isinstance(proj, LowRankLinear):
        return proj.down(x)
    return x


def _last_matrix(proj: nn.Module) -> Tensor:
    """The matrix a projection ends with (d_out x m): ``up`` of a factorized one, the weight of a dense one."""
    return proj.up.weight if isinstance(proj, (LowRankLinear, SharedInputLowRankLinear)) else proj.weight


def _last_bias(proj: nn.Module) -> Optional[Tensor]:
    return (proj.up if isinstance(proj, (LowRankLinear, SharedInputLowRankLinear)) else proj).bias


def _first_matrix(proj: nn.Module) -> Tensor:
    """The matrix a projection starts with (m x d_in): ``down`` of a factorized one, the weight of a dense one."""
    return proj.down.weight if isinstance(proj, (LowRankLinear, SharedInputLowRankLinear)) else proj.weight


class LatentSelfAttention(MultiheadAttention):
    """fairseq's ``MultiheadAttention`` whose incremental state (decoding, no gradients)
    holds the factorized keys' and values' latents ``z = [D_k x; D_v x]`` (r_k + r_v wide) instead of k and v
    (2·d wide). With ``k = U_k z_k + b_k`` and ``v = U_v z_v + b_v``, per head h:

    - scores: ``q_h · (U_k,h z_t + b_k,h) = (U_k,hᵀ q_h) · z_t + q_h · b_k,h``; the second term is the same for every
      position t and cancels in the softmax, so queries are projected into the latent space (``U_k,hᵀ`` absorbed,
      folded into q's own last matrix when that is cheaper);
    - values: ``Σ_t a_t (U_v,h z_t + b_v,h) = U_v,h (Σ_t a_t z_t) + b_v,h`` (weights sum to 1); ``U_v,h`` is folded
      into the first matrix of ``out_proj`` when that is cheaper, ``b_v`` into its bias.

    Exact up to float rounding: fairseq adds positions at the embeddings. Everything else (training, a full forward,
    gradients enabled, a cache already holding k and v) is fairseq's forward. The derived matrices are recomputed
    whenever a parameter changes (as ``SharedDown``'s); parameters and state_dict keys are the module's own."""

    fold = True  # fold U_k into q's last matrix and U_v into out_proj's first where cheaper (False: never; tests)

    def latent_weights(self):
        params = [p for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
                  for p in proj.parameters()]
        key = (self.fold, *((p.data_ptr(), p.device, p.dtype, p._version) for p in params))
        if key != getattr(self, "_latent_key", None):
            with torch.no_grad():
                self._latent_key, self._latent = key, self._derive()
        return self._latent

    def _derive(self) -> dict:
        H, hd, d = self.num_heads, self.head_dim, self.embed_dim
        uk = self.k_proj.up.weight.view(H, hd, -1)  # H x hd x r_k
        uv = self.v_proj.up.weight.view(H, hd, -1)  # H x hd x r_v
        r_k, r_v = uk.size(-1), uv.size(-1)
        out = {}
        # queries: q̃_h = s·U_k,hᵀ (M_q,h p(x) + b_q,h), M_q (d x m) q's last matrix, p(x) what it reads
        mq, bq = _last_matrix(self.q_proj), _last_bias(self.q_proj)
        m = mq.size(1)
        if self.fold and H * r_k * m <= d * m + d * r_k:  # one H·r_k x m matrix instead of M_q then U_kᵀ
            out["q_fold"] = (torch.einsum("hdr,hdm->hrm", uk, mq.view(H, hd, m)) * self.scaling).reshape(H * r_k, m)
            out["q_fold_bias"] = (None if bq is None else
                                  torch.einsum("hdr,hd->hr", uk, bq.view(H, hd)).reshape(-1) * self.scaling)
        else:
            out["uk"] = uk
        # values: out_proj(U_v c + b_v) with out_proj = M_o' · (F_o ·) : fold U_v into F_o, out_proj's first matrix
        fo = _first_matrix(self.out_proj)  # n x d
        n = fo.size(0)
        if self.fold and n * H * r_v <= d * r_v + n * d:
            out["o_fold"] = torch.einsum("nhd,hdr->nhr", fo.view(n, H, hd), uv).reshape(n, H * r_v)
        else:
            out["uv"] = uv
        bv = _last_bias(self.v_proj)
        out["bv"] = bv  # b_v, added after U_v, or (folded) through out_proj's first matrix: F_o b_v
        if "o_fold" in out and bv is not None:
            out["o_fold_bias"] = fo @ bv
        out["ranks"] = (r_k, r_v)
        return out

    def forward(self, query, key, value, key_padding_mask=None, incremental_state=None, need_weights=True,
                static_kv=False, attn_mask=None, before_softmax=False, need_head_weights=False):
        if incremental_state is None or torch.is_grad_enabled() or before_softmax:
            return super().forward(query, key, value, key_padding_mask, incremental_state, need_weights,
                                   static_kv, attn_mask, before_softmax, need_head_weights)
        saved = self._get_input_buffer(incremental_state)
        if "prev_key" in saved:  # a cache begun by fairseq's own forward stays fairseq's
            return super().forward(query, key, value, key_padding_mask, incremental_state, need_weights,
                                   static_kv, attn_mask, before_softmax, need_head_weights)
        return self._latent_forward(query, key_padding_mask, incremental_state, saved, need_weights or
                                    need_head_weights, need_head_weights, attn_mask)

    def _latent_forward(self, x, key_padding_mask, incremental_state, saved, need_weights, need_head_weights,
                        attn_mask):
        w = self.latent_weights()
        H, (r_k, r_v) = self.num_heads, w["ranks"]
        L, B, _ = x.size()
        z = torch.cat([_input_side(self.k_proj, x), _input_side(self.v_proj, x)], dim=-1).transpose(0, 1)
        if "prev_latent" in saved:
            z = torch.cat([saved["prev_latent"], z], dim=1)  # B x S x (r_k + r_v)
        S = z.size(1)
        if key_padding_mask is not None or saved.get("prev_key_padding_mask") is not None:
            key_padding_mask = self._append_prev_key_padding_mask(
                key_padding_mask, saved.get("prev_key_padding_mask"), B, S, False)
        saved["prev_latent"], saved["prev_key_padding_mask"] = z, key_padding_mask
        self._set_input_buffer(incremental_state, saved)
        zk, zv = z[..., :r_k], z[..., r_k:]
        if "q_fold" in w:  # B x H x L x r_k
            qt = F.linear(_input_side(self.q_proj, x), w["q_fold"], w["q_fold_bias"])
            qt = qt.view(L, B, H, r_k).permute(1, 2, 0, 3)
        else:
            q = self.q_proj(x) * self.scaling
            qt = torch.einsum("lbhd,hdr->bhlr", q.view(L, B, H, self.head_dim), w["uk"])
        # one batched product per sentence over its heads and steps: B x (H·L) x r_k by B x r_k x S
        scores = torch.bmm(qt.reshape(B, H * L, r_k), zk.transpose(1, 2)).view(B, H, L, S)
        if attn_mask is not None:
            scores = scores + attn_mask
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask.view(B, 1, 1, S).to(torch.bool), float("-inf"))
        probs = F.softmax(scores.float(), dim=-1).type_as(scores)
        c = torch.bmm(self.dropout_module(probs).view(B, H * L, S), zv).view(B, H, L, r_v)
        if "o_fold" in w:
            first = F.linear(c.permute(2, 0, 1, 3).reshape(L, B, H * r_v), w["o_fold"], w.get("o_fold_bias"))
            out = self._out_rest(first)
        else:
            v = torch.einsum("bhlr,hdr->lbhd", c, w["uv"]).reshape(L, B, self.embed_dim)
            out = self.out_proj(v if w["bv"] is None else v + w["bv"])
        weights = None
        if need_weights:
            weights = probs.transpose(0, 1) if need_head_weights else probs.mean(dim=1)
        return out, weights

    def _out_rest(self, first):
        """out_proj after its first matrix (already applied): its ``up`` with the bias, or just the bias."""
        if isinstance(self.out_proj, (LowRankLinear, SharedInputLowRankLinear)):
            return self.out_proj.up(first)
        return first if self.out_proj.bias is None else first + self.out_proj.bias


def latent_cache_(model: nn.Module) -> List[str]:
    """Inference: every decoder self-attention whose k and v projections are factorized, with latents narrower than k
    and v together (r_k + r_v < 2·d), caches the latents while decoding (``LatentSelfAttention``; the module keeps
    its parameters, attributes and state_dict keys, only its class changes). Returns the attention modules changed.
    Decoding gives the hypotheses of fairseq's own cache, scores equal up to float rounding."""
    from fairseq.modules.transformer_layer import TransformerDecoderLayerBase

    factored = (LowRankLinear, SharedInputLowRankLinear)
    changed = []
    for name, layer in model.named_modules():
        if not isinstance(layer, TransformerDecoderLayerBase) or layer.cross_self_attention:
            continue
        attn = layer.self_attn
        if (type(attn) is not MultiheadAttention or not isinstance(attn.k_proj, factored)
                or not isinstance(attn.v_proj, factored) or attn.bias_k is not None or attn.add_zero_attn
                or not attn.qkv_same_dim or attn.k_proj.rank + attn.v_proj.rank >= 2 * attn.embed_dim):
            continue
        attn.__class__ = LatentSelfAttention
        changed.append(f"{name}.self_attn")
    return changed
