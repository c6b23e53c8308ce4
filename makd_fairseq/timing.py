"""Timing that survives a busy machine: the one timing function of makd-compress's report and the speed benchmark.

    runs = interleaved({"teacher": time_teacher, "student": time_student}, rounds=3)
    ratio(runs["student"], runs["teacher"])  # {"median": 1.41, "range": [1.37, 1.46], "per_round": [...]}

Every measurement is called once untimed first (warm-up: the first reader of a model and the data pays the page
cache, the first process the imports), then ``rounds`` rounds of all of them in turn, so a slow drift of the machine
(another job, clock throttling) hits every measurement alike; a ratio is taken per round (both sides measured
minutes apart at most) and reported as the median over rounds with its range.
"""

import statistics
from typing import Callable, Dict, List, Mapping, Union


def interleaved(calls: Mapping[str, Callable[[], object]], rounds: int, warmup: Union[int, Mapping[str, int]] = 1,
                done: Callable[[int, str, object], None] = None) -> Dict[str, list]:
    """name -> [the result of each timed call of ``calls[name]``] (``rounds`` of them, in round order).

    ``warmup``: untimed calls of each measurement before the first round (an int for all, or name -> count);
    ``done(round, name, result)`` is told of every timed result as it comes (progress lines)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    for name, call in calls.items():
        for _ in range(warmup.get(name, 0) if isinstance(warmup, Mapping) else warmup):
            call()
    runs = {name: [] for name in calls}
    for r in range(rounds):
        for name, call in calls.items():
            runs[name].append(call())
            if done is not None:
                done(r, name, runs[name][-1])
    return runs


def spread(values: List[float]) -> dict:
    """The median of repeated measurements and their range."""
    return {"median": statistics.median(values), "range": [min(values), max(values)]}


def ratio(numerator: List[float], denominator: List[float]) -> dict:
    """``numerator / denominator`` per round (the two lists from the same ``interleaved`` rounds): median, range and
    every round's value."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"a ratio needs the same rounds on both sides, got {len(numerator)} and {len(denominator)}")
    per_round = [a / b for a, b in zip(numerator, denominator)]
    return {**spread(per_round), "per_round": per_round}
