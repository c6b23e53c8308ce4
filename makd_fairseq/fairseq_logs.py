"""Reading what fairseq's CLIs print: the one parser of their logs for makd-compress and the benchmarks.

``fairseq-train --log-format json`` writes one JSON record per log line; ``fairseq-generate`` and
``fairseq-eval-lm`` end with a throughput line. Functions take the log's text (``read(path)``: '' when absent).
"""

import json
import os
import re
from typing import List, Optional

DONE = "done training in"
EARLY_STOP = "early stop since valid performance hasn't improved"
THROUGHPUT = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s, "
                        r"([\d.]+) tokens/s")
LM_THROUGHPUT = re.compile(r"Evaluated ([\d,]+) tokens in ([\d.]+)s \(([\d.]+) tokens/s\)")
PERPLEXITY = re.compile(r"Perplexity: ([\d.]+)")
VALIDATE = re.compile(r"valid on '(\S+)' subset \| loss [\d.]+ \| nll_loss ([\d.]+)")
RESUMED = re.compile(r"Loaded checkpoint \S*checkpoint_last\S*\.pt \(epoch \d+ @ (\d+) updates\)")


class LogError(ValueError):
    """A log that lacks the line a caller needs (the run did not finish); the message is one line."""


def read(path: str) -> str:
    return open(path, encoding="utf-8", errors="replace").read() if os.path.isfile(path) else ""


def records(text: str) -> List[dict]:
    """The JSON records of a ``--log-format json`` log (other lines, the config dump included, skipped)."""
    out = []
    for line in text.splitlines():
        if '{"' in line:
            try:
                out.append(json.loads(line[line.index('{"'):]))
            except ValueError:
                pass
    return out


def finished(text: str) -> bool:
    """fairseq-train ran to its end (a checkpoint_best.pt alone may be from an interrupted run)."""
    return DONE in text


def early_stopped(text: str) -> bool:
    """fairseq-train stopped on ``--patience`` rather than at ``--max-update``."""
    return EARLY_STOP in text


def valid_values(text: str, key: str = "nll_loss", until: Optional[int] = None) -> List[float]:
    """Every validation's ``valid_<key>`` in order (fairseq's cross_entropy criterion logs its nll as valid_loss); with
    ``until``, of the validations at or before that many updates."""
    out = []
    for r in records(text):
        if until is not None and int(float(r.get("valid_num_updates", 0))) > until:
            continue
        if f"valid_{key}" in r:
            out.append(float(r[f"valid_{key}"]))
        elif key == "nll_loss" and "valid_loss" in r:
            out.append(float(r["valid_loss"]))
    return out


def best_valid_nll(text: str) -> Optional[float]:
    """The lowest validation nll (bits per token, as fairseq logs it)."""
    values = valid_values(text)
    return min(values) if values else None


def best_valid(text: str, key: str = "nll_loss", until: Optional[int] = None) -> Optional[float]:
    """The best validation ``valid_<key>`` (up to ``until`` updates): the lowest nll or loss, the highest of anything
    else (a metric, e.g. the bleu or rougeL of ``--eval-metric``); None when no validation logged it."""
    values = valid_values(text, key, until)
    return best_of(values, key) if values else None


def best_of(values, key: str = "nll_loss"):
    """The best of validation values of ``key``: the lowest nll, loss or perplexity, the highest of anything else."""
    return (min if key in ("nll_loss", "loss", "ppl") else max)(values)


def valid_curve(text: str, keys=("nll_loss",)) -> List[list]:
    """``[updates, valid_<key>, ...]`` for every validation in order (None where a validation lacks a key; nll_loss
    falls back to valid_loss as in ``valid_values``)."""
    rows = []
    for r in records(text):
        if "valid_num_updates" not in r:
            continue
        row = [int(float(r["valid_num_updates"]))]
        for key in keys:
            value = r.get(f"valid_{key}", r.get("valid_loss") if key == "nll_loss" else None)
            row.append(None if value is None else float(value))
        rows.append(row)
    return rows


def last_updates(text: str) -> Optional[int]:
    """The number of updates the log reached (its last ``*num_updates``)."""
    found = [v for r in records(text) for k, v in r.items() if k.endswith("num_updates")]
    return int(found[-1]) if found else None


def training_seconds(text: str) -> Optional[float]:
    m = re.findall(rf"{DONE} ([\d.]+) seconds", text)
    return float(m[-1]) if m else None


def resumed_at(text: str) -> List[int]:
    """The updates at which a training resumed from its ``checkpoint_last.pt`` ([] when it ran in one go)."""
    return [int(n) for n in RESUMED.findall(text)]


def generation_speed(text: str, log: str = "the log") -> dict:
    """fairseq-generate's timing line: sentences, tokens, seconds, sentences/s and tokens/s."""
    found = THROUGHPUT.findall(text)
    if not found:
        raise LogError(f"no 'Translated N sentences' line in {log}: did fairseq-generate finish?")
    sentences, tokens, seconds, sentences_per_s, tokens_per_s = found[-1]
    return {"sentences": int(sentences.replace(",", "")), "tokens": int(tokens.replace(",", "")),
            "seconds": float(seconds), "sentences_per_s": float(sentences_per_s), "tokens_per_s": float(tokens_per_s)}


def eval_lm_result(text: str, log: str = "the log") -> dict:
    """fairseq-eval-lm's perplexity and throughput: ppl, tokens, seconds, tokens/s."""
    ppl, speed = PERPLEXITY.findall(text), LM_THROUGHPUT.findall(text)
    if not ppl or not speed:
        raise LogError(f"no perplexity / 'Evaluated N tokens' line in {log}: did fairseq-eval-lm finish?")
    tokens, seconds, tokens_per_s = speed[-1]
    return {"ppl": float(ppl[-1]), "tokens": int(tokens.replace(",", "")), "seconds": float(seconds),
            "tokens_per_s": float(tokens_per_s)}


def validate_nll(text: str, log: str = "the log", subset: str = "valid") -> float:
    """fairseq-validate's nll (bits per token) on ``subset`` (its last line for it; ``--log-format simple``)."""
    found = [float(nll) for name, nll in VALIDATE.findall(text) if name == subset]
    if not found:
        raise LogError(f"no validation nll on '{subset}' in {log}: did fairseq-validate finish?")
    return found[-1]
