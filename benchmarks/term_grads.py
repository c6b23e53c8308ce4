"""Which way each term of the makd criterion pulls a student: per term, its gradient on the same train batches, its
size against cross-entropy's and its cosine with cross-entropy's and with the whole loss's.

    python3 -m benchmarks.term_grads --data BIN --teacher T.pt --students init=S0.pt trained=S1.pt \\
        --out benchmarks/results/term_grads [--batches 8] [--set matrix_weight=0.3 ...]

Issue 34's diagnosis found makd 1.4 BLEU behind the same criterion without its matrix and layer terms (word KD at
T 1) on en→de validation; this says whether those terms fight cross-entropy (negative cosine) or drown it (norm
ratio) at the start of distillation and at its end. Each term's gradient is the gradient of the criterion with every
other term's weight at 0 (``--set`` changes the makd criterion's configuration first; its defaults otherwise), summed
over the first ``--batches`` train batches (fixed order, dropout off): the terms' gradients add up to the whole
criterion's. Train batches only: nothing of valid or test is read.
"""
import argparse
import os

from makd_fairseq.files import git_state, write_json, write_text

from .provenance import command

# each logged term and the weight that isolates it (the others at 0); the aspect weights stay as configured
ISOLATE = {"loss_ce": "ce_weight", "loss_model": "model_weight", "loss_mha": "mha_weight", "loss_ffn": "ffn_weight",
           "loss_attn": "attn_weight", "loss_hidn": "hidn_weight"}


def setup(data, teacher, student, overrides):
    """(task, student in eval mode, MakdConfig) as fairseq-train's makd_translation task would build them."""
    import dataclasses

    import makd_fairseq  # noqa: F401  (registries and the checkpoint allow-list)
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf

    from makd_fairseq.checkpoint import load_checkpoint
    from makd_fairseq.criterions.makd import MakdConfig
    from makd_fairseq.tasks.makd_translation import MakdTranslationConfig, MakdTranslationTask

    # the teacher's task settings (language pair, source truncation, positions), its data and itself as the teacher
    teacher_task = OmegaConf.to_container(load_checkpoint(teacher)["cfg"]["task"], resolve=True, enum_to_str=True)
    fields = {f.name for f in dataclasses.fields(MakdTranslationConfig)}
    task = MakdTranslationTask.setup_task(MakdTranslationConfig(**{
        **{k: v for k, v in teacher_task.items() if k in fields and not k.startswith("_")},
        "data": data, "teacher_path": teacher, "required_seq_len_multiple": 1}))
    models, _ = checkpoint_utils.load_model_ensemble([student], task=task)
    cfg = MakdConfig(sentence_avg=False)
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise SystemExit(f"benchmarks.term_grads: --set {key}: not a makd criterion setting")
        setattr(cfg, key, type(getattr(cfg, key))(value))
    if cfg.kd_alpha >= 0:
        raise SystemExit("benchmarks.term_grads: --set kd_alpha ties the cross-entropy and output weights together; "
                         "set ce_weight and model_weight instead")
    return task, models[0].eval(), cfg


def batches(task, n, max_tokens, seed=1):
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=max_tokens, seed=seed,
                                  ignore_invalid_inputs=True).next_epoch_itr(shuffle=True)
    return [sample for sample, _ in zip(itr, range(n))]


def gradient(task, model, cfg, samples, only=None):
    """The student's gradient (one flat vector) of the criterion summed over ``samples``, per target token; with
    ``only`` a term of ``ISOLATE``, of that term alone (weighted as in the criterion). Also the term's value."""
    import dataclasses

    import torch

    from makd_fairseq.criterions.makd import MakdCriterion
    from makd_fairseq.taps import shape_of

    if only is not None:
        cfg = dataclasses.replace(cfg, **{w: getattr(cfg, w) if term == only else 0.0 for term, w in ISOLATE.items()})
    criterion = MakdCriterion(task, cfg, student_shape=shape_of(model))
    model.zero_grad()
    value, tokens = 0.0, 0
    for sample in samples:
        loss, sample_size, log = criterion(model, sample)
        loss.backward()
        value += float(log[only]) if only else float(log["loss"])
        tokens += sample_size
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    return flat.double() / tokens, value / tokens  # float64: cosines of ~1e6-long vectors exact to 1e-9


def measure(task, model, cfg, samples):
    """Per term: its value, its gradient's norm, the norm against cross-entropy's, and its cosines with
    cross-entropy's and with the whole criterion's gradient; and how far the terms' gradients sum to the whole."""
    import torch.nn.functional as F

    total, _ = gradient(task, model, cfg, samples)
    grads = {term: gradient(task, model, cfg, samples, term) for term in ISOLATE}
    ce = grads["loss_ce"][0]
    rows = {}
    for term, (g, value) in grads.items():
        norm = g.norm().item()
        rows[term] = {"value": round(value, 4), "grad_norm": norm,
                      "norm_vs_ce": norm / max(ce.norm().item(), 1e-30),
                      "cos_ce": F.cosine_similarity(g, ce, dim=0).item() if norm > 0 else None,
                      "cos_total": F.cosine_similarity(g, total, dim=0).item() if norm > 0 else None}
    summed = sum(g for g, _ in grads.values())
    return {"terms": rows, "total_grad_norm": total.norm().item(),
            "sum_residual": (summed - total).norm().item() / max(total.norm().item(), 1e-30)}


def cos(value):
    return "–" if value is None else f"{value:+.3f}"


def table(result):
    lines = []
    for name, m in result["students"].items():
        lines += [f"**{name}** (`{m['checkpoint']}`): whole criterion's gradient norm {m['total_grad_norm']:.4g}", "",
                  "| term | value per token | gradient norm | × cross-entropy's | cosine with CE "
                  "| cosine with the whole |",
                  "|---|---|---|---|---|---|"]
        for term, r in m["terms"].items():
            lines.append(f"| {term} | {r['value']:.4f} | {r['grad_norm']:.4g} | {r['norm_vs_ce']:.2f} | "
                         f"{cos(r['cos_ce'])} | {cos(r['cos_total'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.term_grads", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the teacher's binarized data (its train split is read)")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--students", nargs="+", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="makd criterion settings")
    args = parser.parse_args(argv)
    students = dict(s.split("=", 1) for s in args.students if "=" in s)
    if len(students) != len(args.students):
        parser.error("--students takes NAME=CHECKPOINT pairs")
    for path in [args.teacher, *students.values()]:
        if not os.path.isfile(path):
            parser.error(f"{path}: no such file")
    if not os.path.isdir(args.data):
        parser.error(f"--data {args.data}: no such directory")
    overrides = dict(s.split("=", 1) for s in args.set)
    import torch

    torch.manual_seed(1)
    result = {"students": {}, "batches": args.batches, "max_tokens": args.max_tokens, "settings": overrides}
    for name, path in students.items():
        task, model, cfg = setup(args.data, args.teacher, path, overrides)
        samples = batches(task, args.batches, args.max_tokens)
        result["students"][name] = {"checkpoint": path, **measure(task, model, cfg, samples)}
        print(f"{name}: done", flush=True)
    state = git_state()
    result.update(command=command("benchmarks.term_grads", argv), git_commit=state["commit"], git_dirty=state["dirty"])
    write_json(args.out + ".json", result)
    write_text(args.out + ".md", f"`{result['command']}`\n\n" + table(result))
    print(table(result))
    print(f"wrote {args.out}.json and {args.out}.md")


if __name__ == "__main__":
    main()
