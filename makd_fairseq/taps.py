"""Read a fairseq encoder-decoder's internals during its own forward, the same way for teacher and student.

Only forward hooks are used; no forward code is copied. Two facts of fairseq's ``MultiheadAttention``
shape the design: its fused path (taken whenever it is not decoding incrementally) never calls the
q/k/v/out modules, and layers call it with ``need_weights=False``. So a tapped attention module is switched
to the module path (``module_path``: fairseq's ``skip_embed_dim_check``, the same arithmetic) while the taps
are open, and back on exit; its per-head probabilities are read as the input of its ``dropout_module``, i.e. right after the softmax — the same
tensor the attention output is computed from, no second attention computation.
"""

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional

from torch import Tensor, nn

ATTENTIONS = ("self_attn", "encoder_attn")  # encoder_attn is the decoder's cross-attention
PROJECTIONS = ("q", "k", "v", "out")
# features a frozen model can recompute from a smaller input: q, k and v from the attention's input (one tensor for
# the three of self-attention, the encoder output for cross-attention k and v), fc1's activation from fc1's input
RECOMPUTABLE = ("q", "k", "v", "fc1")


@contextmanager
def module_path(attentions: Iterable[nn.Module]):
    """Inside, each fairseq ``MultiheadAttention`` given calls its q/k/v/out modules (the fused kernel reads their
    weights directly and hides these tensors); on exit each goes back to the path it had."""
    attentions = list(dict.fromkeys(attentions))
    before = [m.skip_embed_dim_check for m in attentions]
    for m in attentions:
        m.skip_embed_dim_check = True
    try:
        yield
    finally:
        for m, was in zip(attentions, before):
            m.skip_embed_dim_check = was


@dataclass(frozen=True)
class Feature:
    """One tensor inside the model.

    ``layer`` -1 with ``name`` "hidden" is the embedding output (the first layer's input).
    Recorded shapes: hidden, q, out, fc1, fc2: T x B x C (T the stack's own length);
    k, v: S x B x C (S the attended length); attn: (B * heads) x T x S probabilities.
    """

    stack: str  # "encoder" | "decoder"
    layer: int
    name: str
    attention: Optional[str] = None  # for attn and q/k/v/out: "self_attn" | "encoder_attn"


@dataclass
class Recomputable:
    """A feature held as its module's input: ``fn(input)`` is the feature (T x B x C or S x B x C)."""

    input: Tensor
    fn: Callable[[Tensor], Tensor]

    def __call__(self) -> Tensor:
        return self.fn(self.input)


def _output(store, key):
    def hook(module, args, output):
        store[key] = output[0] if isinstance(output, tuple) else output

    return hook


def _input(store, key):
    def hook(module, args, *rest):
        store[key] = args[0]

    return hook


class Taps:
    """Context manager: while open, ``values[feature]`` holds each requested feature of the last forward (with
    ``recompute``, features in RECOMPUTABLE as a ``Recomputable``: call it for the feature).

        with Taps(model, features) as taps:
            model(**net_input)
        taps.values[Feature("encoder", 0, "hidden")]
    """

    def __init__(self, model: nn.Module, features: Iterable[Feature], recompute: bool = False):
        self.model = model
        self.features = set(features)
        # recompute: features in RECOMPUTABLE are held as a ``Recomputable`` (their module's input and the module),
        # for a frozen model whose features are needed again only in the backward
        self.recompute = recompute
        self.values: Dict[Feature, Tensor] = {}
        # value × scales[f] is the feature: fairseq multiplies q_proj's output *in place* by head_dim**-0.5
        # right after the projection, so a recorded q holds the scaled query (1.0 for every other feature)
        self.scales: Dict[Feature, float] = {}
        self._stack = ExitStack()

    def module_for(self, f: Feature) -> nn.Module:
        layers = getattr(self.model, f.stack).layers
        if not -1 <= f.layer < len(layers) or (f.layer == -1 and f.name != "hidden"):
            raise IndexError(f"{f.stack} has {len(layers)} layers; no layer {f.layer} to read {f.name}")
        layer = layers[max(f.layer, 0)]
        if f.name in ("attn", *PROJECTIONS):
            mha = getattr(layer, f.attention)
            return mha.dropout_module if f.name == "attn" else getattr(mha, f.name + "_proj")
        return {"hidden": layer, "fc1": layer.activation_dropout_module, "fc2": layer.fc2}[f.name]

    def recomputable(self, f: Feature):
        """(the module whose input is held, the function of that input giving the feature) for f in RECOMPUTABLE."""
        layer = getattr(self.model, f.stack).layers[f.layer]
        if f.name == "fc1":
            return layer.fc1, lambda x: layer.activation_fn(layer.fc1(x))
        mha = getattr(layer, f.attention)
        proj = getattr(mha, f.name + "_proj")
        if f.name == "q":  # as recorded: fairseq scales the query right after the projection
            return proj, lambda x: proj(x) * mha.scaling
        return proj, proj

    def attention_of(self, f: Feature) -> Optional[nn.Module]:
        if f.name not in ("attn", *PROJECTIONS):
            return None
        return getattr(getattr(self.model, f.stack).layers[f.layer], f.attention)

    def __enter__(self) -> "Taps":
        modules = {f: self.module_for(f) for f in self.features}
        # every change to the model is undone by the stack: on exit, and when anything here fails midway
        with ExitStack() as stack:
            stack.enter_context(module_path(a for a in map(self.attention_of, self.features) if a is not None))
            for f, module in modules.items():
                self.scales[f] = 1.0
                if f.name == "q":
                    self.scales[f] = 1.0 / self.attention_of(f).scaling
                if self.recompute and f.name in RECOMPUTABLE:
                    module, fn = self.recomputable(f)
                    handle = module.register_forward_pre_hook(
                        lambda m, args, f=f, fn=fn: self.values.__setitem__(f, Recomputable(args[0], fn)))
                elif f.name == "hidden" and f.layer == -1:
                    handle = module.register_forward_pre_hook(_input(self.values, f))
                elif f.name in ("attn", "fc1"):  # the input of the dropout: probabilities / activation
                    handle = module.register_forward_pre_hook(_input(self.values, f))
                else:
                    handle = module.register_forward_hook(_output(self.values, f))
                stack.callback(handle.remove)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False


def num_heads(model: nn.Module, f: Feature) -> int:
    return getattr(getattr(model, f.stack).layers[f.layer], f.attention).num_heads


def shape_of(model: nn.Module) -> dict:
    """Per stack the model has (a language model has only a decoder): number of layers, hidden width, FFN width,
    attention heads, and which attentions its layers have."""
    out = {}
    for stack in ("encoder", "decoder"):
        if getattr(model, stack, None) is None:
            continue
        layers = getattr(model, stack).layers
        first = layers[0]
        out[stack] = {"layers": len(layers), "width": first.embed_dim,
                      "ffn": first.fc1.out_features, "heads": first.self_attn.num_heads,
                      "attentions": tuple(a for a in ATTENTIONS if getattr(first, a, None) is not None)}
    return out
