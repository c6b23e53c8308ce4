"""makd-shrink: the dense fewer-layer student of the shrink-and-fine-tune baseline."""

import torch

from conftest import load, run, valid_batch
from makd_fairseq.checkpoint import load_checkpoint
from makd_fairseq.shrink import make_dense_student, spread


def test_kept_layers_are_spread_like_distilbart():
    assert spread(12, 6) == [0, 2, 4, 7, 9, 11]
    assert spread(6, 3) == [0, 2, 5]
    assert spread(3, 2) == [0, 2] and spread(4, 1) == [0] and spread(3, 3) == [0, 1, 2]


def test_dense_student_meets_the_budget_with_copied_layers(teacher):
    state = load_checkpoint(str(teacher))
    student, p = make_dense_student(state, 0.6)
    total = p["teacher_params"]
    assert p["params"] <= 0.6 * total
    # within one FFN neuron per layer of the budget: the width is the widest that fits
    layers = sum(len(k) for k in p["keep"].values())
    assert p["params"] > 0.6 * total - layers * (2 * 64 + 1)
    assert sum(len(k) for k in p["keep"].values()) < 4  # teacher: 2 + 2 layers
    t, s = state["model"], student["model"]
    for stack, kept in p["keep"].items():
        for new, old in enumerate(kept):
            a, b = f"{stack}.layers.{new}.", f"{stack}.layers.{old}."
            assert torch.equal(s[a + "self_attn.q_proj.weight"], t[b + "self_attn.q_proj.weight"])
            rows = s[a + "fc1.weight"]
            assert rows.size(0) == p["ffn"][stack]
            # every kept FFN neuron is one of the teacher's, with its fc2 column
            match = (rows[:, None, :] == t[b + "fc1.weight"][None]).all(-1).float().argmax(1)
            assert torch.equal(s[a + "fc2.weight"], t[b + "fc2.weight"][:, match])


def test_makd_shrink_cli_writes_a_student_fairseq_loads(teacher, mt_data, tmp_path):
    out = tmp_path / "dense.pt"
    proc = run("makd-shrink", "--teacher", teacher, "--param-budget", "0.6", "--out", out)
    assert "kept layers" in proc.stdout and "--decoder-layers 1" in proc.stdout  # the decoder shrinks first
    model, task = load(out, mt_data)
    sample = valid_batch(task)
    with torch.no_grad():
        logits = model(**sample["net_input"])[0]
    assert torch.isfinite(logits).all()
    # an existing file is never overwritten without --force; an impossible budget is one line, exit 2
    again = run("makd-shrink", "--teacher", teacher, "--param-budget", "0.6", "--out", out, check=False)
    assert again.returncode == 2 and "exists" in again.stderr
    bad = run("makd-shrink", "--teacher", teacher, "--param-budget", "0.1", "--out", tmp_path / "x.pt", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cannot be met" in bad.stderr
    assert not (tmp_path / "x.pt").exists()
