"""The vocabulary matrix as a target: a factorized output projection and token embeddings that stay tied."""

import re

import torch

from conftest import TRAIN_COMMON, USER_DIR, load, makd_init, run, valid_batch
from makd_fairseq.lowrank import DEFAULT_TARGETS, LowRankEmbedding, LowRankLinear, count_params

WITH_VOCABULARY = ",".join(DEFAULT_TARGETS + ("output_projection",))


def _logits(model, sample):
    net = sample["net_input"]
    with torch.no_grad():
        return model(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"])[0]


def _generation_cfg(data):
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.options import get_generation_parser, parse_args_and_arch

    return convert_namespace_to_omegaconf(parse_args_and_arch(get_generation_parser(), [str(data)]))


def test_tied_vocabulary_matrix_is_one_target_whichever_use_is_named(teacher, tmp_path):
    """--share-all-embeddings: encoder/decoder embeddings and the output projection are one matrix, one row, one
    rank; naming the embeddings or the projection gives the same student."""
    outs = {}
    for i, pattern in enumerate(("output_projection", "embed_tokens")):
        proc = makd_init("--teacher", teacher, "--param-budget", "0.5", "--out", tmp_path / f"s{i}.pt",
                         "--targets", ",".join(DEFAULT_TARGETS + (pattern,)))
        outs[pattern] = proc.stdout
        rows = [line for line in proc.stdout.splitlines() if "embed_tokens" in line]
        assert len(rows) == 1 and rows[0].startswith(
            "decoder.output_projection = encoder.embed_tokens = decoder.embed_tokens "), rows
    strip = lambda s: re.sub(r"wrote .*|--finetune-from-model \S+", "", s)  # noqa: E731
    assert strip(outs["output_projection"]) == strip(outs["embed_tokens"])

    plain = makd_init("--teacher", teacher, "--param-budget", "0.5", "--out", tmp_path / "s2.pt").stdout
    assert "output_projection" not in plain  # off by default
    ratio = float(re.search(r"ratio: ([\d.]+)", outs["output_projection"]).group(1))
    assert ratio <= 0.5
    # with the vocabulary in the budget, the other matrices are compressed less
    rank = lambda out: int(re.search(r"encoder.layers.0.fc1\s+\S+\s+(\d+)", out).group(1))  # noqa: E731
    assert rank(outs["output_projection"]) > rank(plain)


def test_full_rank_vocabulary_factors_give_the_teachers_logits_and_beams(teacher, mt_data, tmp_path):
    """Embedding lookups and the output projection through the factors, in full and incremental decoding; at
    inference the factors (past break-even) merge to one dense matrix that stays tied."""
    makd_init("--teacher", teacher, "--rank-ratio", "1.0", "--targets", WITH_VOCABULARY, "--out", tmp_path / "s.pt")
    t_model, task = load(teacher, mt_data)
    s_model, _ = load(tmp_path / "s.pt", mt_data)
    enc, dec, proj = s_model.encoder.embed_tokens, s_model.decoder.embed_tokens, s_model.decoder.output_projection
    assert isinstance(enc, LowRankEmbedding) and enc is dec and isinstance(proj, LowRankLinear)
    assert enc.up.weight is proj.up.weight and enc.down.weight is proj.down.weight
    assert count_params(s_model) == count_params(t_model) + sum(
        m.rank * (m.in_features + m.out_features) - m.in_features * m.out_features
        for m in s_model.modules() if isinstance(m, LowRankLinear))

    sample = valid_batch(task, max_sentences=4)
    full = _logits(t_model, sample)
    assert torch.allclose(_logits(s_model, sample), full, atol=1e-4)
    net = sample["net_input"]
    with torch.no_grad():
        encoder_out = s_model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
        state, prev = {}, net["prev_output_tokens"]
        for t in range(prev.size(1)):
            step, _ = s_model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
            real = prev[:, t].ne(task.target_dictionary.pad())
            assert torch.allclose(step[real, -1], full[real, t], atol=1e-4)

    cfg = _generation_cfg(mt_data)
    s_model.prepare_for_inference_(cfg)
    enc, proj = s_model.encoder.embed_tokens, s_model.decoder.output_projection
    assert type(enc) is torch.nn.Embedding and type(proj) is torch.nn.Linear and enc.weight is proj.weight
    assert s_model.decoder.embed_tokens is enc and count_params(s_model) == count_params(t_model)
    assert torch.allclose(_logits(s_model, sample), full, atol=1e-4)
    hyps = [task.inference_step(task.build_generator([m], cfg.generation), [m], sample) for m in (t_model, s_model)]
    assert [h[0]["tokens"].tolist() for h in hyps[0]] == [h[0]["tokens"].tolist() for h in hyps[1]]


def test_student_with_factorized_vocabulary_meets_its_budget_distills_and_decodes(teacher, mt_data, tmp_path):
    """Whitened factors (the output projection's inputs are B x T x C), makd distillation through fairseq-train
    (taps and training keep the tie), then fairseq-generate with the factors kept (rank below break-even)."""
    student = tmp_path / "s.pt"
    proc = makd_init("--teacher", teacher, "--param-budget", "0.25", "--targets", WITH_VOCABULARY,
                     "--init", "whiten", "--data", mt_data, "--calibration-tokens", "2000", "--out", student)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("decoder.output_projection"))
    assert row.split()[-1] == "factored" and re.search(r"\s0\.\d{4}\s+0\.\d{4}\s+factored$", row), row
    t_model, _ = load(teacher, mt_data)
    s_model, _ = load(student, mt_data)
    assert count_params(s_model) <= 0.25 * count_params(t_model)

    save = tmp_path / "train"
    run("fairseq-train", mt_data, "--user-dir", USER_DIR, "--task", "makd_translation", "--teacher-path", teacher,
        "--arch", "lowrank_transformer", "--finetune-from-model", student, "--criterion", "makd",
        *TRAIN_COMMON, "--max-update", "3", "--save-dir", save, "--no-save-optimizer-state")
    trained, task = load(save / "checkpoint_last.pt", mt_data)
    assert trained.encoder.embed_tokens.up.weight is trained.decoder.output_projection.up.weight
    assert not torch.equal(trained.decoder.output_projection.up.weight, s_model.decoder.output_projection.up.weight)

    out = run("fairseq-generate", mt_data, "--user-dir", USER_DIR, "--path", save / "checkpoint_last.pt",
              "--gen-subset", "valid", "--beam", "2", "--max-len-b", "10", "--batch-size", "16", "--cpu")
    hyps = re.findall(r"^H-\d+\t\S+\t(.*)$", out.stdout, re.M)
    assert len(hyps) == len(re.findall(r"^S-\d+", out.stdout, re.M)) > 40 and all(hyps)
    assert "merged back" not in out.stderr  # the 25% vocabulary factors are below break-even: kept factored
