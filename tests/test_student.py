"""Students from makd-init against their teacher, through fairseq's own loaders and CLIs."""

import json
import os
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_ARCH, TRAIN_COMMON, USER_DIR, load, makd_init, run, valid_batch
from makd_fairseq.lowrank import LowRankLinear, count_params


def _logits(model, sample):
    net = sample["net_input"]
    with torch.no_grad():
        return model(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"])[0]


def _count_fused(monkeypatch):
    calls = []
    fused = F.multi_head_attention_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "multi_head_attention_forward", counting)
    return calls


def test_full_rank_student_logits_equal_teacher(teacher, full_rank_student, mt_data):
    t_model, task = load(teacher, mt_data)
    s_model, _ = load(full_rank_student, mt_data)
    assert sum(isinstance(m, LowRankLinear) for m in s_model.modules()) == 2 * 6 + 2 * 10
    sample = valid_batch(task)
    assert torch.allclose(_logits(s_model, sample), _logits(t_model, sample), atol=1e-4)


def test_full_rank_student_matches_teacher_in_incremental_decoding(teacher, full_rank_student, mt_data):
    t_model, task = load(teacher, mt_data)
    s_model, _ = load(full_rank_student, mt_data)
    sample = valid_batch(task, max_sentences=4)
    net = sample["net_input"]
    full = _logits(t_model, sample)
    with torch.no_grad():
        enc = s_model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
        state = {}
        prev = net["prev_output_tokens"]
        for t in range(prev.size(1)):
            step, _ = s_model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
            real = prev[:, t].ne(task.target_dictionary.pad())  # right padding: later steps are pads
            assert torch.allclose(step[real, -1], full[real, t], atol=1e-4)

    from fairseq.dataclass.configs import GenerationConfig

    gen_cfg = GenerationConfig(beam=4, max_len_b=30)
    hyps = {}
    for name, model in (("teacher", t_model), ("student", s_model)):
        generator = task.build_generator([model], gen_cfg)
        hyps[name] = task.inference_step(generator, [model], sample)
    for t_hyp, s_hyp in zip(hyps["teacher"], hyps["student"]):
        assert torch.equal(t_hyp[0]["tokens"], s_hyp[0]["tokens"])
        assert abs(t_hyp[0]["score"].item() - s_hyp[0]["score"].item()) < 1e-4


def test_student_never_takes_the_fused_attention_path(teacher, half_student, mt_data, monkeypatch):
    """The fused path reads q_proj.weight directly; a student must run its factors instead."""
    calls = _count_fused(monkeypatch)
    t_model, task = load(teacher, mt_data)
    s_model, _ = load(half_student, mt_data)
    sample = valid_batch(task)
    _logits(t_model, sample)
    assert calls, "the dense teacher should take the fused path (else this test proves nothing)"
    calls.clear()
    s_logits = _logits(s_model.train(), sample)  # training mode too: the path used by fairseq-train
    s_model.eval()
    s_logits = _logits(s_model, sample)
    assert not calls

    # the dense model holding the merged W_r = up @ down takes the fused path and agrees exactly
    for name, module in s_model.named_modules():
        if isinstance(module, LowRankLinear):
            dense = t_model.get_submodule(name)
            dense.weight.data.copy_(module.merged_weight())
            dense.bias.data.copy_(module.up.bias)
    assert torch.allclose(_logits(t_model, sample), s_logits, atol=1e-5)
    assert calls


def test_inference_merges_factors_past_break_even(teacher, full_rank_student, half_student, mt_data, monkeypatch):
    """At full rank the factors cost more than W: fairseq's inference hook makes them dense and fused again."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.options import get_generation_parser, parse_args_and_arch

    cfg = convert_namespace_to_omegaconf(parse_args_and_arch(get_generation_parser(), [str(mt_data)]))
    calls = _count_fused(monkeypatch)
    s_model, task = load(full_rank_student, mt_data)
    sample = valid_batch(task)
    before = _logits(s_model, sample)
    assert not calls and sum(isinstance(m, LowRankLinear) for m in s_model.modules()) == 32
    s_model.prepare_for_inference_(cfg)
    assert not any(isinstance(m, LowRankLinear) for m in s_model.modules())
    t_model, _ = load(teacher, mt_data)
    assert count_params(s_model) == count_params(t_model)
    after = _logits(s_model, sample)
    assert calls, "merged attention should be back on fairseq's fused path"
    assert torch.allclose(after, before, atol=1e-5)

    half, _ = load(half_student, mt_data)  # uniform 50%: every rank is below break-even, nothing merges
    ranks = {n: m.rank for n, m in half.named_modules() if isinstance(m, LowRankLinear)}
    half.prepare_for_inference_(cfg)
    assert {n: m.rank for n, m in half.named_modules() if hasattr(m, "rank")} == ranks


def test_inference_shares_one_down_projection_per_input_and_changes_no_output(half_student, mt_data, monkeypatch):
    """q, k, v of self-attention (and k, v of cross-attention) read one input: at inference their down-projections
    are one product. Logits and beam search are those of the separate factors; the products saved are exact."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.options import get_generation_parser, parse_args_and_arch

    from makd_fairseq.lowrank import SharedInputLowRankLinear

    cfg = convert_namespace_to_omegaconf(parse_args_and_arch(get_generation_parser(), [str(mt_data)]))
    separate, task = load(half_student, mt_data)
    shared, _ = load(half_student, mt_data)
    shared.prepare_for_inference_(cfg)
    kinds = {n: type(m).__name__ for n, m in shared.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj"))}
    assert kinds == {n: "LowRankLinear" if n.endswith("encoder_attn.q_proj") else "SharedInputLowRankLinear"
                     for n in kinds} and len(kinds) == 18  # 2 encoder + 2 decoder layers
    sample = valid_batch(task)
    products = []
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **k: products.append(1) or linear(*a, **k))
    expected = _logits(separate, sample)
    n_separate, products[:] = len(products), []
    assert torch.allclose(_logits(shared, sample), expected, atol=1e-5)
    assert n_separate - len(products) == 2 * 2 + 2 * (2 + 1)  # self-attention: 3 -> 1; cross-attention k, v: 2 -> 1
    monkeypatch.undo()
    generator = task.build_generator([separate], cfg.generation)
    with torch.no_grad():
        a = task.inference_step(generator, [separate], sample)
        b = task.inference_step(task.build_generator([shared], cfg.generation), [shared], sample)
    assert [h[0]["tokens"].tolist() for h in a] == [h[0]["tokens"].tolist() for h in b]
    assert torch.allclose(torch.stack([h[0]["score"] for h in a]), torch.stack([h[0]["score"] for h in b]), atol=1e-5)
    assert sum(isinstance(m, SharedInputLowRankLinear) for m in shared.modules()) == 16


def test_makd_init_reports_parameters_at_inference(teacher, tmp_path):
    proc = makd_init("--teacher", teacher, "--rank-ratio", "1.0", "--out", tmp_path / "s.pt")
    teacher_params = int(re.search(r"teacher params: (\d+)", proc.stdout).group(1))
    at_inference = int(re.search(r"student params at inference: (\d+)", proc.stdout).group(1))
    assert at_inference == teacher_params
    assert proc.stdout.count("dense (merged)") == 32


def test_half_budget_student_has_half_the_parameters(teacher, half_student, mt_data):
    t_model, _ = load(teacher, mt_data)
    s_model, _ = load(half_student, mt_data)
    assert count_params(s_model) == pytest.approx(0.5 * count_params(t_model), rel=0.01)
    assert count_params(s_model) <= 0.5 * count_params(t_model)


def test_makd_init_prints_the_table_and_totals(teacher, tmp_path):
    out = tmp_path / "s.pt"
    proc = makd_init("--teacher", teacher, "--param-budget", "0.6", "--allocation", "spectrum", "--out", out)
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if line.startswith("encoder.layers.0.self_attn.q_proj "))
    _, shape, rank, before, after, residual, output_error, inference = row.split(None, 7)
    assert output_error == "–"  # the output error needs --data
    assert shape == "64x64" and int(before) == 4096 and int(after) == int(rank) * 128
    assert inference == ("dense (merged)" if int(rank) >= 32 else "factored")  # 64·64 / (64 + 64) = 32
    assert 0 < float(residual) < 1
    teacher_params = int(re.search(r"teacher params: (\d+)", proc.stdout).group(1))
    student_params = int(re.search(r"student params: (\d+)", proc.stdout).group(1))
    assert student_params == pytest.approx(0.6 * teacher_params, rel=0.01)
    state = torch.load(out)
    assert state["cfg"]["model"].arch == "lowrank_transformer"
    assert json.loads(state["cfg"]["model"].lowrank_ranks)["encoder.layers.0.self_attn.q_proj"] == int(rank)


def test_fairseq_train_builds_lowrank_transformer_from_scratch(mt_data, tmp_path):
    run("fairseq-train", mt_data, "--user-dir", USER_DIR, "--arch", "lowrank_transformer", "--rank", "8",
        *TINY_ARCH, *TRAIN_COMMON, "--max-update", "3", "--save-dir", tmp_path)
    state = torch.load(tmp_path / "checkpoint_last.pt")
    ranks = json.loads(state["cfg"]["model"].lowrank_ranks)
    assert len(ranks) == 32 and set(ranks.values()) == {8}
    assert state["model"]["encoder.layers.0.fc1.down.weight"].shape == (8, 64)


def test_student_finetunes_with_fairseq_train_and_decodes_with_fairseq_generate(half_student, mt_data, tmp_path):
    # no shape flags: the student named by --finetune-from-model brings its dimensions (2+2 layers, 64 wide)
    run("fairseq-train", mt_data, "--user-dir", USER_DIR, "--arch", "lowrank_transformer",
        "--finetune-from-model", half_student, *TRAIN_COMMON, "--max-update", "3",
        "--save-dir", tmp_path)
    trained = torch.load(tmp_path / "checkpoint_last.pt")["cfg"]["model"]
    assert (trained.encoder_layers, trained.decoder_embed_dim, trained.share_all_embeddings) == (2, 64, True)
    proc = run("fairseq-generate", mt_data, "--user-dir", USER_DIR, "--path", tmp_path / "checkpoint_last.pt",
               "--beam", "4", "--cpu", "--batch-size", "16")
    translated = int(re.search(r"Translated ([\d,]+) sentences", proc.stderr).group(1))
    assert len(re.findall(r"^H-\d+", proc.stdout, flags=re.M)) == translated >= 45  # of 50 test pairs
    assert "Generate test with beam=4: BLEU4" in proc.stdout


def test_fairseq_generate_loads_checkpoints_with_weights_only_on(teacher, mt_data):
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    plain = run("fairseq-generate", mt_data, "--path", teacher, "--cpu", "--batch-size", "16", check=False)
    assert plain.returncode != 0 and "argparse.Namespace" in plain.stderr  # the problem we fix
    fixed = run("fairseq-generate", mt_data, "--user-dir", USER_DIR, "--path", teacher, "--cpu", "--batch-size", "16")
    assert "Generate test with beam=5" in fixed.stdout


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused(teacher, mt_data, tmp_path):
    state = torch.load(teacher)
    marker = tmp_path / "pwned"
    state["extra_state"]["payload"] = _Exploit(marker)
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)
    proc = makd_init("--teacher", evil, "--rank", "4", "--out", tmp_path / "s.pt", check=False)
    assert proc.returncode == 2
    assert "refused" in proc.stderr and "not allow-listed" in proc.stderr
    gen = run("fairseq-generate", mt_data, "--user-dir", USER_DIR, "--path", evil, "--cpu", check=False)
    assert gen.returncode != 0 and "Weights only load failed" in gen.stderr
    assert not marker.exists() and not (tmp_path / "s.pt").exists()


@pytest.fixture(scope="module")
def lstm_teacher(mt_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("lstm")
    run("fairseq-train", mt_data, "--arch", "lstm", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
        "--encoder-hidden-size", "16", "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16",
        *TRAIN_COMMON, "--max-update", "1", "--save-dir", save)
    return save / "checkpoint_last.pt"


def _bad_inputs(teacher, lstm_teacher, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(teacher.read_bytes()[:4000])
    return {
        "missing": (["--teacher", tmp_path / "nope.pt", "--rank", "4"], "no such checkpoint file"),
        "not a checkpoint": (["--teacher", text, "--rank", "4"], "not a readable fairseq checkpoint"),
        "truncated": (["--teacher", truncated, "--rank", "4"], "not a readable fairseq checkpoint"),
        "no targets": (["--teacher", teacher, "--rank", "4", "--targets", "nothing_proj"], "no Linear layer matching"),
        "lstm arch": (["--teacher", lstm_teacher, "--rank", "4"], "is not a fairseq Transformer"),
        "rank too big": (["--teacher", teacher, "--rank", "65"], "outside [1, min(d_out, d_in)=64]"),
        "impossible budget": (["--teacher", teacher, "--param-budget", "0.05"], "smallest achievable budget is"),
        "two rank flags": (["--teacher", teacher, "--rank", "4", "--param-budget", "0.5"], "exactly one of"),
    }


@pytest.mark.parametrize("case", ["missing", "not a checkpoint", "truncated", "no targets", "lstm arch",
                                  "rank too big", "impossible budget", "two rank flags"])
def test_makd_init_bad_input_is_one_line_exit_2_nothing_written(case, teacher, lstm_teacher, tmp_path):
    args, message = _bad_inputs(teacher, lstm_teacher, tmp_path)[case]
    out = tmp_path / "student.pt"
    proc = makd_init(*args, "--out", out, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("makd-init: error:")
    assert message in proc.stderr
    assert not out.exists() and not (tmp_path / "student.pt.tmp").exists()


def test_makd_init_never_overwrites_without_force(teacher, tmp_path):
    out = tmp_path / "student.pt"
    out.write_bytes(b"precious")
    proc = makd_init("--teacher", teacher, "--rank", "4", "--out", out, check=False)
    assert proc.returncode == 2 and "pass --force" in proc.stderr
    assert out.read_bytes() == b"precious"
    makd_init("--teacher", teacher, "--rank", "4", "--out", out, "--force")
    assert torch.load(out)["cfg"]["model"].arch == "lowrank_transformer"
    proc = makd_init("--teacher", teacher, "--rank", "4", "--out", teacher, "--force", check=False)
    assert proc.returncode == 2 and "is the teacher itself" in proc.stderr


def test_bart_shaped_teacher_gives_a_lowrank_bart_base_student(mt_data, tmp_path):
    run("fairseq-train", mt_data, "--task", "translation", "--arch", "bart_base", "--encoder-layers", "1",
        "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", *TRAIN_COMMON, "--max-update", "2", "--save-dir", tmp_path / "bart")
    bart = tmp_path / "bart" / "checkpoint_last.pt"
    makd_init("--teacher", bart, "--rank-ratio", "1.0", "--out", tmp_path / "s.pt")
    t_model, task = load(bart, mt_data)
    s_model, _ = load(tmp_path / "s.pt", mt_data)
    assert torch.load(tmp_path / "s.pt")["cfg"]["model"].arch == "lowrank_bart_base"
    assert s_model.encoder.layernorm_embedding is not None  # BART's shape survives
    sample = valid_batch(task)
    assert torch.allclose(_logits(s_model, sample), _logits(t_model, sample), atol=1e-4)


@pytest.mark.parametrize("dense", ["transformer_iwslt_de_en", "transformer_wmt_en_de",
                                   "transformer_vaswani_wmt_en_de_big", "bart_base"])
def test_presets_mirror_fairseq_architectures(dense):
    from argparse import Namespace

    from fairseq.models import ARCH_CONFIG_REGISTRY

    ours, theirs = Namespace(), Namespace()
    ARCH_CONFIG_REGISTRY["lowrank_" + dense](ours)
    ARCH_CONFIG_REGISTRY[dense](theirs)
    assert {k: v for k, v in vars(ours).items() if k in vars(theirs)} == vars(theirs)
    assert ours.lowrank_targets == "q_proj,k_proj,v_proj,out_proj,fc1,fc2"


def test_a_student_brings_its_shape_and_a_contradicting_flag_names_both(half_student):
    from argparse import Namespace

    from fairseq.models import ARCH_CONFIG_REGISTRY
    from makd_fairseq.student import ShapeError

    for arch in ("lowrank_transformer", "lowrank_transformer_iwslt_de_en"):
        args = Namespace(finetune_from_model=str(half_student), share_all_embeddings=False)
        ARCH_CONFIG_REGISTRY[arch](args)
        assert (args.encoder_layers, args.decoder_layers, args.encoder_embed_dim, args.encoder_ffn_embed_dim,
                args.encoder_attention_heads, args.share_all_embeddings) == (2, 2, 64, 128, 4, True)
    args = Namespace(finetune_from_model=str(half_student), encoder_layers=6, decoder_embed_dim=64)
    with pytest.raises(ShapeError, match=r"is a student with encoder_layers=2; the command line gives encoder_layers=6"):
        ARCH_CONFIG_REGISTRY["lowrank_transformer"](args)
    # a dense checkpoint is fairseq's usual fine-tuning: the command line decides
    plain = Namespace(encoder_layers=6)
    ARCH_CONFIG_REGISTRY["lowrank_transformer"](plain)
    assert plain.encoder_layers == 6


def test_distill_command_repeats_shape_flags_only_where_a_student_cannot_bring_its_shape(half_student, teacher,
                                                                                       capsys):
    from makd_fairseq.student import distill_command, main

    low = distill_command("DATA", str(teacher), str(half_student), ["--criterion", "makd"])
    assert low[:2] == ["fairseq-train", "DATA"] and low[-2:] == ["--criterion", "makd"]
    assert low[low.index("--arch") + 1] == "lowrank_transformer" and "--encoder-layers" not in low
    assert low[low.index("--task") + 1] == "makd_translation"
    dense = distill_command("DATA", str(teacher), str(teacher))  # a dense student (makd-shrink's kind)
    assert dense[dense.index("--encoder-layers") + 1] == "2" and "--share-all-embeddings" in dense
    assert main(["DATA", str(teacher), str(half_student), "--lr", "0.001"]) == 0
    assert capsys.readouterr().out.splitlines() == low[:-2] + ["--lr", "0.001"]


def test_task_flags_repeat_every_task_setting_of_the_teacher_that_differs_from_the_task_default(teacher, mt_data):
    """What makd-compress repeats on fairseq-train/-generate, parsed back by fairseq: the language pair, and a bool
    setting whose flag flips its default (a teacher trained on right-padded sources: --left-pad-source False)."""
    from fairseq import options

    from makd_fairseq.checkpoint import load_checkpoint
    from makd_fairseq.student import task_flags

    def parsed(flags):
        parser = options.get_generation_parser(default_task="makd_translation")
        return options.parse_args_and_arch(parser, [str(mt_data), "--path", str(teacher), *flags])

    state = load_checkpoint(str(teacher))
    plain = task_flags(state)  # the fixture teacher: every setting at its default, the pair from the file names
    assert plain == [] and parsed(plain).left_pad_source is True
    state["cfg"]["task"].update(left_pad_source=False, source_lang="en", target_lang="de")
    flags = task_flags(state)
    assert sorted(flags) == sorted(["--left-pad-source", "--source-lang", "en", "--target-lang", "de"]), flags
    args = parsed(flags)
    assert args.left_pad_source is False and args.left_pad_target is False and args.source_lang == "en"
