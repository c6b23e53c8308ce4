"""One incremental decoding step of a fairseq Transformer decoder as plain products: what the makd tasks' beam search
decodes with (issue 35).

At batch 1 a decoding step is bound by the operators it dispatches, not by its FLOPs or the weights it reads
(``benchmarks/results/step_ops.json``). ``LeanDecoder`` computes what fairseq's ``TransformerDecoder`` computes for one
new token of every hypothesis — embedding and positions, each layer's self-attention over a preallocated cache,
cross-attention over keys and values computed once per source sentence, the feed-forward block, the output
projection and log-softmax — with no incremental-state dictionaries, module hooks or per-call checks in between.

It decodes a model as ``make_generation_fast_`` left it: a factorized matrix stays two products, the projections that
share one down-projection product (``SharedDown``) share it here too, and a decoder self-attention that caches latents
(``LatentSelfAttention``) caches them here: ``z = [D_k x; D_v x]`` (r_k + r_v wide) instead of k and v, with the
derived matrices of ``LatentSelfAttention.latent_weights`` (queries absorb ``U_k``, ``U_v`` folded into ``out_proj``).

Supported: post- or pre-norm layers with sinusoidal positions, dense or low-rank projections and output projection;
anything else (learned positions, scaled attention or heads, an extra FFN layer norm, a key bias, ...) is refused with
the feature named (``refusal``), and the generator then decodes with fairseq's own step.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lowrank.inference import LatentSelfAttention, SharedInputLowRankLinear
from .lowrank.layers import Factors

Products = List[Tuple[Tensor, Optional[Tensor]]]
FIRST_CAPACITY = 16  # decoding steps the caches hold before they double
# few rows times a large matrix: W·xᵀ, not x·Wᵀ (F.linear) — CPU BLAS picks a much faster kernel for it (on the
# 2-core CI machine, torch 2.13: the 10k-vocabulary output projection for 4 rows ~3×, a 512x512 matrix ~1.3×; equal
# or slower from 64 rows, and slower for small matrices)
SKINNY_ROWS, LARGE_MATRIX = 16, 512 * 512


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for x (rows x d_in); on CPU computed as ``(W·xᵀ)ᵀ`` for few rows and a large
    matrix (measured on CPU only)."""
    if x.dim() == 2 and x.size(0) <= SKINNY_ROWS and weight.numel() >= LARGE_MATRIX and x.device.type == "cpu":
        out = weight @ x.t() if bias is None else torch.addmm(bias.unsqueeze(1), weight, x.t())
        return out.t().contiguous()
    return F.linear(x, weight, bias)


def products(proj: nn.Module) -> Products:
    """A projection as the matrix products it applies in order: ``[(W, b)]`` for a Linear, ``[(down, None), (up, b)]``
    for a factorized one."""
    if isinstance(proj, (Factors, SharedInputLowRankLinear)):
        return [(proj.down.weight, None), (proj.up.weight, proj.up.bias)]
    if isinstance(proj, nn.Linear):
        return [(proj.weight, proj.bias)]
    raise ValueError(f"LeanDecoder: cannot apply a {type(proj).__name__} as products")


def apply(x: Tensor, steps: Products) -> Tensor:
    for weight, bias in steps:
        x = linear(x, weight, bias)
    return x


def norm(module: nn.Module):
    """A layer norm as a function of x: ``F.layer_norm`` with its parameters (no module call), or the module."""
    if type(module) is nn.LayerNorm:
        return lambda x: F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
    return module


def refusal(decoder) -> Optional[str]:
    """What of ``decoder`` LeanDecoder does not compute, or None."""
    from fairseq.models.transformer import TransformerDecoderBase
    from fairseq.modules import SinusoidalPositionalEmbedding

    if not isinstance(decoder, TransformerDecoderBase):
        return f"a {type(decoder).__name__} (fairseq's TransformerDecoder only)"
    if not isinstance(decoder.embed_positions, SinusoidalPositionalEmbedding):
        return f"positions {type(decoder.embed_positions).__name__} (sinusoidal only)"
    if decoder.project_in_dim is not None or decoder.project_out_dim is not None:
        return "an input or output projection of the embedding dimension"
    if getattr(decoder, "adaptive_softmax", None) is not None:
        return "an adaptive softmax"
    if getattr(decoder, "alignment_heads", None) or getattr(decoder, "alignment_layer", None) not in (
            None, len(decoder.layers) - 1):
        return "alignment heads or layer"
    for i, layer in enumerate(decoder.layers):
        for name in ("attn_ln", "c_attn", "ffn_layernorm", "w_resid"):
            if getattr(layer, name, None) is not None:
                return f"layer {i}: {name}"
        if getattr(layer, "cross_self_attention", False) or layer.encoder_attn is None:
            return f"layer {i}: no separate cross-attention"
        for attn in (layer.self_attn, layer.encoder_attn):
            if attn.bias_k is not None or attn.add_zero_attn:
                return f"layer {i}: a key/value bias or zero attention"
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                if not isinstance(proj, (nn.Linear, Factors, SharedInputLowRankLinear)):
                    return f"layer {i}: a {type(proj).__name__} projection"
    return None


def _front(attn) -> Tuple[Optional[Tuple[Tensor, List[int]]], List[tuple]]:
    """How q, k and v of a self-attention start: (the stacked down-projection product they share, or None; per
    projection ``(index of its part of the shared product or None, its own first product or None, its last matrix,
    its last bias)``). A dense projection has no first product: its last matrix reads x itself."""
    shared = getattr(attn, "shared_down", None)
    front = (shared.weight(), shared.sizes) if shared is not None else None
    plans = []
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        *first, last = products(proj)
        index = proj.index if isinstance(proj, SharedInputLowRankLinear) else None
        plans.append((index, first[0][0] if first and index is None else None, *last))
    return front, plans


class LeanDecoder:
    """Incremental decoding of ``decoder`` (a fairseq ``TransformerDecoder`` in eval mode, no gradients) for
    ``sentences × beam`` hypotheses: ``start`` once per batch, then ``step`` per token and ``reorder`` as the beam
    search reorders its hypotheses (and drops finished sentences). Log-probabilities equal fairseq's decoder's up to
    float rounding (``tests/test_lean_step.py``); the generator's hypotheses equal fairseq's
    (``tests/test_latent_cache.py``)."""

    def __init__(self, decoder):
        why = refusal(decoder)
        if why:
            raise NotImplementedError(f"LeanDecoder does not compute {why}")
        self.decoder = decoder
        self.positions = decoder.embed_positions
        self.attn: Optional[Tensor] = None  # the last layer's cross-attention of the last step, mean over heads

    def _plan(self, layer) -> dict:
        """The tensors one decoder layer's step reads, resolved once per batch (derived matrices are current)."""
        sa, ca = layer.self_attn, layer.encoder_attn
        front, (q, k, v) = _front(sa)
        plan = {
            "front": front, "q": q, "k": k, "v": v, "o": products(sa.out_proj), "heads": sa.num_heads,
            "scaling": sa.scaling, "latent": sa.latent_weights() if isinstance(sa, LatentSelfAttention) else None,
            "cq": products(ca.q_proj), "co": products(ca.out_proj), "cross_heads": ca.num_heads,
            "cross_scaling": ca.scaling, "f1": products(layer.fc1), "f2": products(layer.fc2),
            "act": layer.activation_fn, "ln1": norm(layer.self_attn_layer_norm),
            "ln2": norm(layer.encoder_attn_layer_norm), "ln3": norm(layer.final_layer_norm),
            "pre": layer.normalize_before,
        }
        if plan["latent"] is not None and "o_fold" in plan["latent"]:  # out_proj after its folded first matrix
            plan["o_rest"] = plan["o"][-1] if len(plan["o"]) == 2 else (None, plan["o"][0][1])
        return plan

    def start(self, encoder_out: Tensor, padding: Optional[Tensor], beam: int, max_len: int = FIRST_CAPACITY):
        """``encoder_out`` (S x sentences x d) and its padding mask (sentences x S) of each source sentence once;
        caches for ``sentences × beam`` hypotheses (hypothesis i of sentence i // beam), ``max_len`` steps before
        they grow."""
        n, d = encoder_out.size(1), encoder_out.size(2)
        self.beam, self.t, self.rows, self.attn = beam, 0, n * beam, None
        self.layers = [self._plan(layer) for layer in self.decoder.layers]
        self.output = products(self.decoder.output_projection)
        self.final_norm = None if self.decoder.layer_norm is None else norm(self.decoder.layer_norm)
        enc = encoder_out.transpose(0, 1)  # n x S x d
        self.mask = None if padding is None or not padding.any() else padding.view(n, 1, 1, -1)
        self.cache = []
        for layer, module in zip(self.layers, self.decoder.layers):
            ch, h = layer["cross_heads"], layer["heads"]
            # n x H x S x hd: each sentence's keys and values, once (contiguous: matmul would copy them every step)
            cross = {k: apply(enc, products(proj)).view(n, -1, ch, d // ch).transpose(1, 2).contiguous()
                     for k, proj in (("ck", module.encoder_attn.k_proj), ("cv", module.encoder_attn.v_proj))}
            if layer["latent"] is not None:
                r_k, r_v = layer["latent"]["ranks"]
                own = {"zk": enc.new_zeros(self.rows, max_len, r_k), "zv": enc.new_zeros(self.rows, max_len, r_v)}
            else:
                own = {k: enc.new_zeros(self.rows, h, max_len, d // h) for k in ("k", "v")}
            own.update({"spare_" + k: torch.empty_like(v) for k, v in own.items()})  # what reorder gathers into
            self.cache.append({**own, **cross})

    STEP_DIM = {"zk": 1, "zv": 1, "k": 2, "v": 2}  # the steps' dimension of each self-attention cache

    def reorder(self, order: Tensor):
        """Hypothesis i takes over the self-attention caches of hypothesis ``order[i]`` (of the same sentence); fewer
        rows than before: the sentences of the rows kept, in order (the beam search dropped finished ones). Only the
        steps so far are gathered, into a second buffer kept for it (no allocation per step)."""
        rows = order.numel()
        for c in self.cache:
            for key, dim in self.STEP_DIM.items():
                if key in c:
                    spare = c["spare_" + key][:rows]
                    torch.index_select(c[key].narrow(dim, 0, self.t), 0, order, out=spare.narrow(dim, 0, self.t))
                    c[key], c["spare_" + key] = spare, c[key]
        if rows != self.rows:
            sentences = order.view(-1, self.beam)[:, 0] // self.beam
            for c in self.cache:
                for key in ("ck", "cv"):
                    c[key] = c[key].index_select(0, sentences)
            if self.mask is not None:
                self.mask = self.mask.index_select(0, sentences)
            self.rows = rows

    def _grow(self):
        """Twice the steps in every self-attention cache (the steps so far copied)."""
        for c in self.cache:
            for key, dim in self.STEP_DIM.items():
                if key in c:
                    c[key] = torch.cat([c[key], torch.zeros_like(c[key])], dim=dim)
                    c["spare_" + key] = torch.empty_like(c[key])

    def step(self, tokens: Tensor, temperature: float = 1.0) -> Tensor:
        """Log-probabilities (rows x V, float) of the next token after ``tokens`` (rows: each hypothesis's last
        token); ``self.attn``: the last layer's cross-attention (rows x S, mean over heads) as fairseq's decoder
        returns it."""
        first = self.cache[0]
        if self.t == (first["zk"] if "zk" in first else first["k"]).size(-2):
            self._grow()
        x = self.decoder.embed_scale * self.decoder.embed_tokens(tokens) + self.positions.weights[
            self.positions.padding_idx + 1 + self.t]
        if self.decoder.layernorm_embedding is not None:
            x = self.decoder.layernorm_embedding(x)
        last = len(self.layers) - 1
        for i, (layer, c) in enumerate(zip(self.layers, self.cache)):
            self_attention = self._latent_attention if layer["latent"] is not None else self._self_attention
            for block, ln, extra in ((self_attention, layer["ln1"], None),
                                     (self._cross_attention, layer["ln2"], i == last),
                                     (self._feed_forward, layer["ln3"], None)):
                x = x + block(layer, c, ln(x), extra) if layer["pre"] else ln(x + block(layer, c, x, extra))
        if self.final_norm is not None:
            x = self.final_norm(x)
        self.t += 1
        logits = apply(x, self.output)
        if temperature != 1.0:
            logits = logits / temperature
        return F.log_softmax(logits.float(), dim=-1)

    @staticmethod
    def _inputs(layer, y) -> List[Tensor]:
        """What the last matrices of q, k and v read: parts of the shared down-projection product, each one's own
        down-projection, or y."""
        parts = linear(y, layer["front"][0]).split(layer["front"][1], dim=-1) if layer["front"] else ()
        return [parts[index] if index is not None else (y if down is None else linear(y, down))
                for index, down, _, _ in (layer["q"], layer["k"], layer["v"])]

    def _self_attention(self, layer, c, y, _):
        """Attention of each hypothesis over its own tokens so far; this step's key and value go into the cache."""
        t, rows, h, d = self.t, self.rows, layer["heads"], y.size(-1)
        q, k, v = (linear(x, plan[2], plan[3]) for x, plan in zip(self._inputs(layer, y),
                                                                       (layer["q"], layer["k"], layer["v"])))
        c["k"][:, :, t] = k.view(rows, h, d // h)
        c["v"][:, :, t] = v.view(rows, h, d // h)
        q = q.mul_(layer["scaling"]).view(rows, h, 1, d // h)
        a = torch.softmax(q @ c["k"][:, :, :t + 1].transpose(-1, -2), dim=-1)
        return apply((a @ c["v"][:, :, :t + 1]).view(rows, d), layer["o"])

    def _latent_attention(self, layer, c, y, _):
        """Self-attention over the cached latents (``LatentSelfAttention``'s algebra, its derived matrices)."""
        t, rows, h, w = self.t, self.rows, layer["heads"], layer["latent"]
        (r_k, r_v), hd = w["ranks"], y.size(-1) // h
        x_q, c["zk"][:, t], c["zv"][:, t] = self._inputs(layer, y)
        if "q_fold" in w:  # rows x H x r_k
            qt = linear(x_q, w["q_fold"], w["q_fold_bias"]).view(rows, h, r_k)
        else:
            q = linear(x_q, layer["q"][2], layer["q"][3]).mul_(layer["scaling"]).view(rows, h, 1, hd)
            qt = (q @ w["uk"]).view(rows, h, r_k)  # (rows x H x 1 x hd) @ (H x hd x r_k)
        a = torch.softmax(torch.bmm(qt, c["zk"][:, :t + 1].transpose(1, 2)), dim=-1)  # rows x H x (t+1)
        ctx = torch.bmm(a, c["zv"][:, :t + 1])  # rows x H x r_v
        if "o_fold" in w:
            first = linear(ctx.view(rows, h * r_v), w["o_fold"], w.get("o_fold_bias"))
            weight, bias = layer["o_rest"]
            return linear(first, weight, bias) if weight is not None else (first if bias is None else first + bias)
        v = (ctx.unsqueeze(2) @ w["uv"].transpose(1, 2)).view(rows, h * hd)  # U_v,h per head
        return apply(v if w["bv"] is None else v + w["bv"], layer["o"])

    def _cross_attention(self, layer, c, y, keep_attn):
        """Attention of every beam of a sentence over that sentence's keys and values (computed once, in start)."""
        n, beam, ch, d = self.rows // self.beam, self.beam, layer["cross_heads"], y.size(-1)
        q = apply(y, layer["cq"]).mul_(layer["cross_scaling"]).view(n, beam, ch, d // ch).transpose(1, 2)
        scores = q @ c["ck"].transpose(-1, -2)  # n x H x beam x S
        if self.mask is not None:
            scores = scores.masked_fill(self.mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if keep_attn:
            self.attn = probs.mean(dim=1).view(self.rows, -1)
        ctx = probs @ c["cv"]  # n x H x beam x hd
        return apply(ctx.transpose(1, 2).reshape(self.rows, d), layer["co"])

    @staticmethod
    def _feed_forward(layer, c, y, _):
        return apply(layer["act"](apply(y, layer["f1"])), layer["f2"])
