"""LeanDecoder (makd_fairseq/lean_step.py): one decoding step as plain products gives fairseq's decoder's log-probs,
through reorders of the beam, for the fixture teacher, a 50% student, a student with its vocabulary matrix
factorized, and pre-norm layers; what it does not compute it refuses by name."""

import pytest
import torch
import torch.nn.functional as F

from conftest import batch_of, load, makd_init
from makd_fairseq.lean_step import LeanDecoder

STEPS, BEAM = 6, 3


@pytest.fixture(scope="module")
def vocab_student(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("lean") / "student.pt"
    makd_init("--teacher", teacher, "--param-budget", "0.5", "--targets",
              "q_proj,k_proj,v_proj,out_proj,fc1,fc2,output_projection", "--out", out)
    return out


@pytest.mark.parametrize("which", ["teacher", "half_student", "vocab_student", "pre_norm"])
def test_lean_step_gives_fairseqs_log_probs_through_reorders(which, request, mt_data):
    model, task = load(request.getfixturevalue("teacher" if which == "pre_norm" else which), mt_data)
    if which == "pre_norm":  # the same weights read as pre-norm layers: fairseq's layer reads the flag at forward
        for layer in model.decoder.layers:
            layer.normalize_before = True
    task.load_dataset("valid")
    sizes = task.dataset("valid").src_sizes
    ids = [int(i) for i in (sizes.argmin(), sizes.argmax(), len(sizes) // 2)]  # sources of unequal length
    sample = batch_of(task, ids)["net_input"]
    n = sample["src_tokens"].size(0)
    assert (sample["src_tokens"] == task.source_dictionary.pad()).any()  # the padding mask counts
    rows, eos, vocab = n * BEAM, task.target_dictionary.eos(), len(task.target_dictionary)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        enc = model.encoder(sample["src_tokens"], sample["src_lengths"])
        expanded = model.encoder.reorder_encoder_out(enc, torch.arange(n).repeat_interleave(BEAM))
        lean = LeanDecoder(model.decoder)
        lean.start(enc["encoder_out"][0], (enc["encoder_padding_mask"] or [None])[0], BEAM, STEPS)
        prev, state = torch.full((rows, 1), eos), {}
        for _ in range(STEPS):
            logits, _ = model.decoder(prev, encoder_out=expanded, incremental_state=state)
            want = F.log_softmax(logits[:, -1].float(), dim=-1)
            got = lean.step(prev[:, -1])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # log-probs down to -30: float rounding
            # each hypothesis continues one of its own sentence's, as a beam search reorders them
            order = torch.arange(rows) // BEAM * BEAM + torch.randint(BEAM, (rows,), generator=gen)
            model.decoder.reorder_incremental_state_scripting(state, order)
            lean.reorder(order)
            prev = torch.cat([prev[order], torch.randint(4, vocab, (rows, 1), generator=gen)], dim=1)
    assert lean.t == STEPS


def test_lean_step_refuses_what_it_does_not_compute(teacher, mt_data):
    model, _ = load(teacher, mt_data)
    model.decoder.layers[1].c_attn = torch.nn.Parameter(torch.ones(4))  # fairseq's --scale-heads
    with pytest.raises(NotImplementedError, match="layer 1: c_attn"):
        LeanDecoder(model.decoder)
