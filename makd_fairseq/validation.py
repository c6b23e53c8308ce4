"""Validation on the task's metric: ``--eval-metric bleu|chrf|rougeL`` logs ``valid_bleu`` (``valid_chrf``,
``valid_rougeL``) at every validation, so that fairseq's own ``--best-checkpoint-metric bleu
--maximize-best-checkpoint-metric`` and ``--patience`` choose the checkpoint and stop on it.

The mechanism is fairseq's ``--eval-bleu`` (``TranslationTask``): each valid batch is decoded with the task's sequence
generator, the batch's sufficient statistics go into its logging output (summed over batches and workers by fairseq's
metrics), and the score is derived from their sums once per validation. The metric is makd-score's own
(``score.statistics`` / ``score.from_statistics``: corpus sacreBLEU / chrF with makd-score's signature, mean
rouge-score F1 with stemming), on strings decoded as fairseq-generate prints its ``D-`` and ``T-`` lines, so
``valid_bleu`` is what ``makd-score --metric bleu`` says of ``fairseq-generate --gen-subset valid`` with the same
generation flags (``--eval-metric-args``) and ``--remove-bpe`` (``--eval-metric-remove-bpe``).

With the metric on, every valid sentence is scored: fairseq drops the last batch of a split when its size is not a
multiple of ``--required-batch-size-multiple`` (fairseq#5036), so the splits validated on (those fairseq-train loads
with ``combine=False``) are batched with a multiple of 1; the training batches stay as they are. With
``--eval-metric none`` (the default) nothing here runs.
"""

import argparse
import json
from typing import List, Tuple

from fairseq import metrics, utils
from torch import nn

from .score import from_statistics, statistics

EVAL_METRICS = ("none", "bleu", "chrf", "rougeL")
# makd-score's --metric (makd-compress's) -> the validation metric, the one its main score is
FOR_SCORE_METRIC = {"bleu": "bleu", "chrf": "chrf", "rouge": "rougeL"}


def generation_args(flags) -> str:
    """``--eval-metric-args`` JSON for fairseq-generate's generation flags in ``flags`` (beam, lengths, penalties;
    the others ignored; the last of a flag wins, as in argparse), so that validation decodes as the test generation
    does."""
    from fairseq.dataclass.configs import GenerationConfig
    from fairseq.dataclass.utils import gen_parser_from_dataclass

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # another tool's flag is not a prefix
    gen_parser_from_dataclass(parser, GenerationConfig())
    given, defaults = vars(parser.parse_known_args(list(flags))[0]), vars(parser.parse_args([]))
    out = {k: v for k, v in given.items() if v != defaults[k]}
    out["beam"] = given["beam"]
    return json.dumps(dict(sorted(out.items())))


def unwrapped(model):
    """The model inside fairseq's / torch's data-parallel wrappers."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


class MetricValidationMixin:
    """A translation task's ``--eval-metric``: hypotheses of each valid batch scored as makd-score scores them."""

    _metric_generator = None
    _metric_model = None
    _validation_splits = frozenset()

    @property
    def eval_metric(self) -> str:
        value = self.cfg.eval_metric
        return str(getattr(value, "value", value))

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if not combine:  # fairseq-train loads its training split with combine=True, validation splits without
            self._validation_splits = self._validation_splits | {split}

    def get_batch_iterator(self, dataset, *args, **kwargs):
        if self.eval_metric != "none" and any(dataset is self.datasets.get(s) for s in self._validation_splits):
            kwargs["required_batch_size_multiple"] = 1  # score every valid sentence (fairseq#5036)
        return super().get_batch_iterator(dataset, *args, **kwargs)

    def metric_generator(self, model):
        """The sequence generator of ``--eval-metric-args`` around ``model`` (built once per model)."""
        model = unwrapped(model)
        if self._metric_model is not model:
            self._metric_generator = self.build_generator([model], argparse.Namespace(
                **json.loads(self.cfg.eval_metric_args)))
            self._metric_model = model
        return self._metric_generator

    def metric_strings(self, sample, model) -> Tuple[List[str], List[str]]:
        """(hypotheses, references) of a batch as fairseq-generate prints them (``D-``, ``T-``): the best beam,
        the generator's special symbols stripped, ``--eval-metric-remove-bpe`` applied, <unk> escaped in references."""
        generator = self.metric_generator(model)
        strip = getattr(generator, "symbols_to_strip_from_output", {generator.eos})
        remove_bpe, d = self.cfg.eval_metric_remove_bpe, self.target_dictionary
        out = self.inference_step(generator, [unwrapped(model)], sample, prefix_tokens=None)
        hyps = [d.string(o[0]["tokens"].int().cpu(), remove_bpe, extra_symbols_to_ignore=strip) for o in out]
        refs = [d.string(utils.strip_pad(t, d.pad()).int().cpu(), remove_bpe, escape_unk=True,
                         extra_symbols_to_ignore=strip) for t in sample["target"]]
        return hyps, refs

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self.eval_metric != "none":
            hyps, refs = self.metric_strings(sample, model)
            logging_output["_metric_sentences"] = len(hyps)
            # one scalar per statistic: fairseq sums each logged key over batches and workers
            for i, value in enumerate(statistics(self.eval_metric, hyps, refs)):
                logging_output[f"_metric_{i}"] = value
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        metric = self.eval_metric
        if metric == "none" or not any("_metric_sentences" in log for log in logging_outputs):
            return  # a training step, or validation without the metric

        def summed(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        metrics.log_scalar("_metric_sentences", summed("_metric_sentences"))
        keys = sorted((k for k in logging_outputs[0] if k.startswith("_metric_") and k[8:].isdigit()),
                      key=lambda k: int(k[8:]))
        for key in keys:
            metrics.log_scalar(key, summed(key))

        def derived(meters):
            if not meters["_metric_sentences"].sum:
                return 0.0
            return from_statistics(metric, [meters[k].sum for k in keys])

        metrics.log_derived(metric, derived)
