"""Input statistics of a model's target Linear layers on real data: the Gram matrices data-aware factors need.

    grams = input_grams(model, batches(task, "train", tokens=32768), names)   # name -> G = Σ x xᵀ (float64)

Every target Linear sees its inputs through a forward pre-hook while the model runs in eval mode without
gradients; attention modules take the module path (``taps.module_path``) so that q/k/v/out are called at all.
Only non-padding positions count: encoder inputs (and the decoder's cross-attention keys/values, which are
encoder outputs) are masked by the source, every other decoder input by the decoder's own input tokens. Layers
read T x B x C; the output projection, after the decoder's last transpose, B x T x C. A token embedding has no
input vector and no Gram matrix: its factors are those of the output projection it is tied to, or a plain SVD.
"""

import logging
from typing import Dict, Iterable, Iterator, List, Tuple

import torch
from torch import Tensor, nn

from .taps import module_path

logger = logging.getLogger(__name__)


def distillation_task(teacher_path: str, state: dict, data: str, task_name: str):
    """The makd task over the binarized ``data`` that owns the teacher: its dictionaries, datasets and the one
    dictionary check (``TeacherMixin.check_dictionaries``) run when ``task.teacher`` is first read."""
    from fairseq import tasks
    from omegaconf import OmegaConf

    cfg = state["cfg"]["task"]
    cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg) else dict(vars(cfg))
    cfg.update(_name=task_name, data=data, teacher_path=teacher_path)
    return tasks.setup_task(OmegaConf.create(cfg))


def batches(task, split: str, tokens: int, max_tokens: int = 4096, seed: int = 1) -> Iterator[dict]:
    """Shuffled (seeded) batches of ``split`` until at least ``tokens`` target tokens have been yielded."""
    from fairseq import utils

    task.load_dataset(split)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens, seed=seed, ignore_invalid_inputs=True,
        max_positions=utils.resolve_max_positions(task.max_positions()),
    ).next_epoch_itr(shuffle=True)
    seen = 0
    for sample in itr:
        if not sample:
            continue
        yield sample
        seen += sample["ntokens"]
        if seen >= tokens:
            return


def positions(name: str) -> str:
    """Whose padding masks a target's inputs: cross-attention keys/values are encoder outputs."""
    if name.startswith("encoder.") or ".encoder_attn.k_proj" in name or ".encoder_attn.v_proj" in name:
        return "encoder"
    return "decoder"


@torch.no_grad()
def input_grams(model: nn.Module, samples: Iterable[dict], names: List[str], pad: int) -> Dict[str, Tensor]:
    """``G = Σ x xᵀ`` (d_in x d_in, float64) of the inputs of each Linear in ``names`` over non-padding positions.

    The model is left as it was (hooks removed, attention paths and train/eval mode restored)."""
    from fairseq.modules import MultiheadAttention

    modules = dict(model.named_modules())
    grams = {name: torch.zeros(modules[name].in_features, modules[name].in_features, dtype=torch.float64)
             for name in names}
    masks: Dict[str, Tensor] = {}
    cache: Dict[tuple, tuple] = {}  # q, k and v of a self-attention share one input: one product per batch

    def hook(name):
        def record(module, args):
            x = args[0]
            mask = masks[positions(name)]  # T x B, the layout fairseq's layers use
            if name.endswith("output_projection"):
                mask = mask.t()
            if x.shape[:2] != mask.shape:
                raise RuntimeError(f"calibration: {name} got input {tuple(x.shape)}, expected {tuple(mask.shape)} x C")
            key = (id(x), positions(name))  # the cache holds x, so its id is not reused within the batch
            if key not in cache:
                rows = x[mask].double()
                cache[key] = (x, rows.t() @ rows)
            grams[name] += cache[key][1]

        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    attentions = [m for m in model.modules() if isinstance(m, MultiheadAttention)]
    was_training = model.training
    model.eval()
    try:
        with module_path(attentions):
            for sample in samples:
                net_input = sample["net_input"]
                source = net_input["src_tokens"]
                decoder_input = net_input.get("prev_output_tokens", source)  # a language model reads its source
                masks["encoder"], masks["decoder"] = source.ne(pad).t(), decoder_input.ne(pad).t()
                cache.clear()
                model(**net_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return grams


def calibrate(model: nn.Module, task, split: str, tokens: int, names: List[str]) -> Tuple[Dict[str, Tensor], int]:
    """(Gram matrices of ``names``' inputs on about ``tokens`` target tokens of ``split``, the target tokens used);
    see ``input_grams``."""
    samples = list(batches(task, split, tokens))
    if not samples:
        raise ValueError(f"calibration: the {split} split of the data has no usable example")
    n = sum(s["ntokens"] for s in samples)
    logger.info(f"calibration: {len(samples)} batches, {n} target tokens of {split}")
    grams = input_grams(model, samples, names, task.target_dictionary.pad())
    return grams, n
