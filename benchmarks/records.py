"""What a quality results file says of each model: per seed its scores and training record (best validation nll,
updates, early stop, resumptions, the validation curve, the commits it trained at), per method and budget the mean
and sd over seeds."""
import json
import os
import statistics

from makd_fairseq import fairseq_logs

from .commands import VALID_METRIC
from .runner import first_seed
from .sizes import FULL, RACES


def training_record(log, metric=None):
    """Best validation nll, updates, early stop, resumptions and the validation curve (``[updates, valid nll, valid
    metric]`` per validation; the metric None where --eval-metric did not log it) of a json-format fairseq-train log
    (None, None, False, None, None when there is no log: a teacher given with --teacher)."""
    if not os.path.isfile(log):
        return {"valid_nll": None, "updates": None, "early_stopped": False, "resumed_at": None, "curve": None}
    text = fairseq_logs.read(log)
    return {"valid_nll": fairseq_logs.best_valid_nll(text), "updates": fairseq_logs.last_updates(text),
            "early_stopped": fairseq_logs.early_stopped(text), "resumed_at": fairseq_logs.resumed_at(text),
            "curve": fairseq_logs.valid_curve(text, ("nll_loss", metric)) if metric
            else [row + [None] for row in fairseq_logs.valid_curve(text)]}


def device_of(command):
    """Where a recorded command ran: ``cpu`` (fairseq's --cpu) or ``gpu``."""
    return "cpu" if "--cpu" in command else "gpu"


def seed_record(run, method, seed, checkpoint, metrics):
    """One trained model: its scores, best validation nll, updates, validation curve, and the commit(s) and device(s)
    it was trained at (one record per start of its training)."""
    log = run.path("teacher.log") if method == "teacher" else os.path.join(os.path.dirname(checkpoint), "train.log")
    prov = log + ".provenance.json"
    return {"seed": seed, "metrics": metrics, **training_record(log, VALID_METRIC.get(run.args.task)),
            "checkpoint": os.path.relpath(checkpoint, run.work),
            "trained_at": [{**{k: r[k] for k in ("commit", "dirty", "started")}, "device": device_of(r["command"])}
                           for r in json.load(open(prov))]
            if os.path.isfile(prov) else None}


def race_value(checkpoint, record, key, until):
    """What a race reads of one racer: its best validation ``key`` up to ``until`` updates (None: the whole training),
    from its train.log when it trained here (what makd-compress's race reads, ``fairseq_logs.best_valid``), else from
    the validation curve of its seed record taken over with --reuse (``training_record``: [updates, nll, metric])."""
    if checkpoint is not None:
        return fairseq_logs.best_valid(fairseq_logs.read(os.path.join(os.path.dirname(checkpoint), "train.log")),
                                       key, until)
    values = [row[2] for row in record.get("curve") or [] if row[2] is not None and (until is None or row[0] <= until)]
    return fairseq_logs.best_of(values, key) if values else None


def add_races(run, races, models, scored, updates, reused):
    """Each derived method of ``races`` (``sizes.RACES``) at each budget and seed where both racers trained, here or
    in a run taken over with --reuse (``reused``): appended to ``models`` and ``scored`` as the winner of the race
    over their first ``updates`` updates, or over their whole trainings for a race of length ``sizes.FULL`` (the
    higher best validation metric so far, the method on a tie: ``makd_fairseq.compress.race_winner``); a race whose
    winner was taken over is taken over too (its seed record and hypotheses in ``reused``). Returns (race, budget,
    seed) -> {"updates" (None: the whole trainings), "selected_on", "values", "winner"} (as makd-compress's
    race.json)."""
    from makd_fairseq.compress import race_winner

    if not races:
        return {}
    key, races_run = VALID_METRIC[run.args.task], {}  # races are refused for language models (no metric)
    for race in races:
        method, baseline, length = RACES[race]
        until = None if length == FULL else updates
        trained = {(m, b, s): c for m, b, s, c in models if s is not None and m not in RACES}
        for (m, budget, seed), checkpoint in list(trained.items()):
            other = (baseline, budget, seed)
            if m != method or other not in trained:
                continue
            racers = {method: (m, budget, seed), baseline: other}
            values = {racer: race_value(trained[k], reused.get(k, ({},))[0], key, until)
                      for racer, k in racers.items()}
            missing = [racer for racer, value in values.items() if value is None]
            if missing:
                raise SystemExit(f"benchmarks.quality: {race}: {', '.join(missing)} at {budget:g}, seed {seed} logged "
                                 f"no validation {key}" + ("" if until is None else f" in the first {until} updates"))
            winner = race_winner(values, key, method)
            kept = racers[winner]
            models.append((race, budget, seed, trained[kept]))
            scored[(race, budget, seed)] = scored[kept]
            if trained[kept] is None:  # the winner's record, without what another race of it said
                record, hyps = reused[kept]
                reused[(race, budget, seed)] = ({k: v for k, v in record.items() if k != "race"}, hyps)
            races_run[(race, budget, seed)] = {"updates": until, "selected_on": key, "values": values,
                                               "winner": winner}
    return races_run


def params_of(checkpoint):
    from makd_fairseq.checkpoint import build_model_from_state, load_checkpoint
    from makd_fairseq.lowrank import count_params

    return count_params(build_model_from_state(load_checkpoint(checkpoint)))


def teacher_arch(checkpoint):
    from makd_fairseq.checkpoint import load_checkpoint, model_args
    from makd_fairseq.student import arch_flags

    targs = model_args(load_checkpoint(checkpoint))
    return " ".join(["--arch", targs.arch, *arch_flags(targs)])


def seq_kd_manifest(data):
    """What makd-teacher-data recorded about the sequence-level KD data, and where it ran (None if this run built
    none)."""
    path = os.path.join(data, "teacher_data.json")
    if not os.path.isfile(path):
        return None
    m = json.load(open(path))
    return {**{k: m[k] for k in ("beam", "max_len_a", "max_len_b", "sentences", "decode_seconds", "command")},
            "device": device_of(m["command"].split())}


def method_entries(run, models, scored, reused, inits_of, speeds):
    """One entry per method and budget, in the order of ``models`` (method, budget, seed, checkpoint): parameters,
    each metric's mean (and sd) over seeds, and for trained methods the seeds' records with their mean validation
    nll and updates. ``scored``: (method, budget, seed) -> (metrics, hypotheses); ``reused``: the records of seeds
    taken over with --reuse; ``inits_of``: (method, budget) -> the student it starts from; ``speeds``: the timed
    generation of (method, budget)."""
    methods = []
    for method, budget, seed, checkpoint in models:
        if seed not in (None, first_seed(models, method, budget)):
            continue
        runs = [(s, c) for m, b, s, c in models if (m, b) == (method, budget)]
        per_seed = [scored[(method, budget, s)][0] for s, _ in runs]
        here = [c for _, c in runs if c is not None]  # all seeds taken over: the student they started from
        entry = {"method": method, "budget": budget,
                 # every seed taken over: the student it started from (a race's: its racers')
                 "params": params_of(here[0] if here else inits_of[(RACES[method][0] if method in RACES else method,
                                                                     budget)]),
                 "metrics": {k: round(statistics.mean(m[k] for m in per_seed), 2) for k in per_seed[0]},
                 "sd": {k: round(statistics.stdev(m[k] for m in per_seed), 2) for k in per_seed[0]}
                 if len(per_seed) > 1 else None, "valid_nll": None, "updates": None}
        if seed is not None or method == "teacher":
            entry["seeds"] = [seed_record(run, method, s, c, scored[(method, budget, s)][0]) if c is not None
                              else reused[(method, budget, s)][0] for s, c in runs]
            trained = [r for r in entry["seeds"] if r.get("valid_nll") is not None]
            entry["valid_nll"] = round(statistics.mean(r["valid_nll"] for r in trained), 3) if trained else None
            entry["updates"] = round(statistics.mean(r["updates"] for r in trained)) if trained else None
        entry["speed"] = speeds.get((method, budget))
        methods.append(entry)
    return methods


def with_races(methods, races_run):
    """The seed records of derived methods say what their race chose (``add_races``' records)."""
    for entry in methods:
        for record in entry.get("seeds") or []:
            race = races_run.get((entry["method"], entry["budget"], record["seed"]))
            if race:
                record["race"] = race
    return methods
