"""LeanDecoder (makd_fairseq/lean_step.py): one decoding step as plain products gives fairseq's decoder's log-probs,
through reorders of the beam, for the fixture teacher, a 50% student, a student with its vocabulary matrix
factorized, and pre-norm layers; what it does not compute it refuses by name."""

import pytest
import torch
import torch.nn.functional as F

from conftest import batch_of, load, makd_init
from makd_fairseq.lean_step import LeanDecoder
from makd_fairseq.lowrank import LatentSelfAttention

STEPS, BEAM = 6, 3


@pytest.fixture(scope="module")
def vocab_student(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("lean") / "student.pt"
    makd_init("--teacher", teacher, "--param-budget", "0.5", "--targets",
              "q_proj,k_proj,v_proj,out_proj,fc1,fc2,output_projection", "--out", out)
    return out


MODELS = ["teacher", "half_student", "vocab_student", "pre_norm", "half_student-prepared",
          "half_student-prepared-unfolded", "vocab_student-prepared", "half_student-prepared-no_latent"]


def _decoded(which, request, mt_data):
    """(the model LeanDecoder decodes, fairseq's unprepared model with the same weights, its task)."""
    name, *how = which.split("-")
    path = request.getfixturevalue("teacher" if name == "pre_norm" else name)
    model, task = load(path, mt_data)
    reference, _ = load(path, mt_data)
    if name == "pre_norm":  # the same weights read as pre-norm layers: fairseq's layer reads the flag at forward
        for m in (model, reference):
            for layer in m.decoder.layers:
                layer.normalize_before = True
    if "prepared" in how:  # as fairseq-generate leaves a student: shared down-projections, latent cache
        model.latent_cache = "no_latent" not in how
        model.make_generation_fast_()
        for layer in model.decoder.layers:
            layer.self_attn.fold = "unfolded" not in how
        latent = [isinstance(layer.self_attn, LatentSelfAttention) for layer in model.decoder.layers]
        assert all(latent) == ("no_latent" not in how) and any(latent) == all(latent)
        assert all(hasattr(layer.self_attn, "shared_down") for layer in model.decoder.layers)
    return model, reference, task


@pytest.mark.parametrize("which", MODELS)
def test_lean_step_gives_fairseqs_log_probs_through_reorders(which, request, mt_data):
    """Log-probs of fairseq's decoder (unprepared, incremental) through random beam reorders, a finished sentence
    dropped midway (the batch shrinks) and caches grown past their first capacity; latents really cached."""
    model, reference, task = _decoded(which, request, mt_data)
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
        expanded = reference.encoder.reorder_encoder_out(
            reference.encoder(sample["src_tokens"], sample["src_lengths"]), torch.arange(n).repeat_interleave(BEAM))
        lean = LeanDecoder(model.decoder)
        lean.start(enc["encoder_out"][0], (enc["encoder_padding_mask"] or [None])[0], BEAM, max_len=2)
        prev, state = torch.full((rows, 1), eos), {}
        for t in range(STEPS):
            logits, extra = reference.decoder(prev, encoder_out=expanded, incremental_state=state)
            want = F.log_softmax(logits[:, -1].float(), dim=-1)
            got = lean.step(prev[:, -1])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # log-probs down to -30: float rounding
            torch.testing.assert_close(lean.attn, extra["attn"][0][:, -1], rtol=1e-5, atol=1e-6)
            # each hypothesis continues one of its own sentence's, as a beam search reorders them; at step 3 the
            # middle sentence has finished and leaves the batch
            sentences = torch.arange(rows // BEAM) if t != 3 else torch.tensor([0, 2])
            order = (sentences.repeat_interleave(BEAM) * BEAM
                     + torch.randint(BEAM, (sentences.numel() * BEAM,), generator=gen))
            reference.decoder.reorder_incremental_state_scripting(state, order)
            expanded = reference.encoder.reorder_encoder_out(expanded, order)
            lean.reorder(order)
            rows = order.numel()
            prev = torch.cat([prev[order], torch.randint(4, vocab, (rows, 1), generator=gen)], dim=1)
    assert lean.t == STEPS and rows == 2 * BEAM
    cached = {k: tuple(v.shape) for k, v in lean.cache[0].items() if k in ("k", "zk")}
    if "no_latent" in which or "prepared" not in which:
        assert cached["k"][2] >= STEPS  # grown from 2 steps
    else:  # the latents, r_k wide (not d)
        assert cached == {"zk": (rows, 8, model.decoder.layers[0].self_attn.k_proj.rank)}


def test_lean_step_refuses_what_it_does_not_compute(teacher, mt_data):
    model, _ = load(teacher, mt_data)
    model.decoder.layers[1].c_attn = torch.nn.Parameter(torch.ones(4))  # fairseq's --scale-heads
    with pytest.raises(NotImplementedError, match="layer 1: c_attn"):
        LeanDecoder(model.decoder)
