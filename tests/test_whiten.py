"""Data-aware (whitened) factors: exact inputs, exact optimality on the calibration inputs, exact full rank."""

import copy

import pytest
import torch

from conftest import load, makd_init, valid_batch
from makd_fairseq.calibration import calibrate, distillation_task, input_grams
from makd_fairseq.checkpoint import load_checkpoint
from makd_fairseq.taps import Feature, Taps
from makd_fairseq.lowrank import Factorization, allocate_ranks, find_targets, relative_error, svd_matrices


@pytest.fixture(scope="module")
def calibrated(teacher, mt_data):
    """(teacher model, task, train Gram matrices of every target, target tokens used)."""
    task = distillation_task(str(teacher), load_checkpoint(str(teacher)), str(mt_data), "makd_translation")
    model = copy.deepcopy(task.teacher)
    names = list(find_targets(model))
    grams, tokens = calibrate(model, task, "train", 4000, names)
    return model, task, grams, tokens


def test_gram_matrices_are_those_of_the_inputs_at_non_padding_positions(teacher, mt_data):
    model, task = load(teacher, mt_data)
    sample = valid_batch(task)
    pad = task.target_dictionary.pad()
    names = ["encoder.layers.0.fc1", "decoder.layers.1.encoder_attn.k_proj", "decoder.layers.0.self_attn.q_proj"]
    fc1_inputs = []  # encoder.layers.0.fc1's input (T x B x C) in the very forward input_grams runs
    handle = model.encoder.layers[0].fc1.register_forward_pre_hook(lambda m, args: fc1_inputs.append(args[0]))
    try:
        grams = input_grams(model, [sample], names, pad)
    finally:
        handle.remove()
    net = sample["net_input"]
    first_input = Feature("decoder", -1, "hidden")  # the first decoder layer's input
    with torch.no_grad(), Taps(model, [first_input]) as taps:
        enc = model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
        model(**net)
    memory = enc["encoder_out"][0][net["src_tokens"].ne(pad).t()].double()  # the cross-attention's keys
    x = taps.values[first_input][net["prev_output_tokens"].ne(pad).t()].double()  # q_proj's input (post-norm)
    assert torch.allclose(grams["decoder.layers.1.encoder_attn.k_proj"], memory.t() @ memory, rtol=1e-4, atol=1e-3)
    assert torch.allclose(grams["decoder.layers.0.self_attn.q_proj"], x.t() @ x, rtol=1e-4, atol=1e-3)
    # padding never counts: the encoder's Gram is built from exactly the non-padding source positions
    (x,) = fc1_inputs
    real = net["src_tokens"].ne(pad).t()
    assert not real.all()  # the batch has padded positions, and their inputs are not zero
    assert x[~real].abs().sum() > 0
    rows, every = x[real].double(), x.reshape(-1, x.size(-1)).double()
    assert torch.allclose(grams["encoder.layers.0.fc1"], rows.t() @ rows, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(grams["encoder.layers.0.fc1"], every.t() @ every, rtol=1e-3, atol=1e-3)
    # and the model is left as it was: fused attention path, no hooks
    assert not model.encoder.layers[0].self_attn.skip_embed_dim_check
    assert not model.decoder.layers[0].self_attn._forward_pre_hooks


def test_whitened_factors_have_the_smallest_output_error_on_the_calibration_inputs(calibrated):
    model, _task, grams, tokens = calibrated
    assert tokens >= 4000
    targets = find_targets(model)
    matrices, _ = svd_matrices(targets, with_spectrum=True)
    ranks = allocate_ranks(matrices, sum(p.numel() for p in model.parameters()), param_budget=0.5)
    worse = []
    for name, linear in targets.items():
        w, g, r = linear.weight, grams[name], ranks[name]
        whitened, plain = Factorization(w, g), Factorization(w)
        e_white = relative_error(w, torch.matmul(*whitened.factors(r)), g)
        e_plain = relative_error(w, torch.matmul(*plain.factors(r)), g)
        if e_white > e_plain + 1e-9:
            worse.append((name, e_white, e_plain))
        # the error left is exactly the dropped whitened singular values
        energy = whitened.s.pow(2)
        assert e_white == pytest.approx((energy[r:].sum() / energy.sum()).sqrt().item(), rel=1e-6)
    assert not worse


def test_full_rank_whitened_student_equals_the_teacher(teacher, mt_data, tmp_path):
    out = tmp_path / "white.pt"
    proc = makd_init("--teacher", teacher, "--rank-ratio", "1.0", "--init", "whiten", "--data", mt_data,
                     "--calibration-tokens", "2000", "--out", out)
    assert "output error" in proc.stdout
    state = load_checkpoint(str(out))
    assert state["makd"]["init"] == "whiten"
    assert state["makd"]["calibration"]["tokens"] >= 2000
    assert state["makd"]["calibration"]["data"] == str(mt_data)
    t_model, task = load(teacher, mt_data)
    s_model, _ = load(out, mt_data)
    sample = valid_batch(task)
    with torch.no_grad():
        t_out = t_model(**sample["net_input"])[0]
        s_out = s_model(**sample["net_input"])[0]
    assert torch.allclose(s_out, t_out, atol=1e-3), (s_out - t_out).abs().max()


def test_whiten_without_data_is_a_one_line_error(teacher, tmp_path):
    out = tmp_path / "s.pt"
    proc = makd_init("--teacher", teacher, "--param-budget", "0.5", "--init", "whiten", "--out", out, check=False)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines() == ["makd-init: error: --init whiten needs --data BIN: the teacher's "
                                                "inputs on its train split"]


def test_spectrum_allocation_warns_because_it_measured_worse_than_uniform(teacher, tmp_path):
    proc = makd_init("--teacher", teacher, "--param-budget", "0.6", "--allocation", "spectrum", "--out",
                     tmp_path / "s.pt")
    assert "warning: --allocation spectrum" in proc.stderr and (tmp_path / "s.pt").exists()
    assert "warning" not in makd_init("--teacher", teacher, "--param-budget", "0.6", "--out",
                                      tmp_path / "u.pt").stderr


def _valid_nll(path, data):
    """Validation nll of a checkpoint, nats per target token."""
    model, task = load(path, data)
    task.load_dataset("valid")
    itr = task.get_batch_iterator(task.dataset("valid"), max_tokens=4096).next_epoch_itr(shuffle=False)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for sample in itr:
            lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
            target = sample["target"]
            mask = target.ne(task.target_dictionary.pad())
            total -= lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)[mask].sum().item()
            tokens += mask.sum().item()
    return total / tokens


def test_whitened_students_beat_plain_svd_and_spectrum_allocation_does_not_beat_uniform(teacher, mt_data, tmp_path):
    """Why --init whiten is recommended and --allocation spectrum warns: validation nll of untrained 50% students."""
    nll = {}
    for init in ("svd", "whiten"):
        for allocation in ("uniform", "spectrum"):
            out = tmp_path / f"{init}_{allocation}.pt"
            makd_init("--teacher", teacher, "--param-budget", "0.5", "--init", init, "--data", mt_data,
                      "--calibration-tokens", "4000", "--allocation", allocation, "--out", out)
            nll[init, allocation] = _valid_nll(out, mt_data)
    assert nll["whiten", "uniform"] < nll["svd", "uniform"], nll
    # if this fails, spectrum allocation has become useful: drop makd-init's warning
    assert nll["whiten", "spectrum"] > nll["whiten", "uniform"], nll
