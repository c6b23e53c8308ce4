"""Data-parallel distillation: 2 CPU processes (gloo) equal 1 process, with fairseq's legacy_ddp and with torch's DDP."""

import re
import socket
import subprocess

import pytest
import torch

from conftest import TINY_ARCH, USER_DIR, makd_init, run

NAMES = ("loss", "loss_ce", "loss_model", "loss_attn", "loss_hidn", "loss_mha", "loss_ffn")
UPDATES = 4


def per_update(log: str) -> list:
    """{name: value} for each train_inner line (logged every update)."""
    rows = [l for l in log.splitlines() if "train_inner" in l]
    return [{n: float(re.search(rf"\b{n}=([-\d.e]+)", l).group(1)) for n in NAMES} for l in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_student") / "s.pt"
    makd_init("--teacher", teacher, "--param-budget", "0.5", "--out", out)
    return out


def makd_args(data, teacher, student, save_dir):
    # dropout off: each rank draws its own masks, so only a deterministic model can match exactly
    return ["fairseq-train", str(data), "--user-dir", USER_DIR, "--task", "makd_translation",
            "--teacher-path", str(teacher), "--arch", "lowrank_transformer", "--finetune-from-model", str(student),
            *TINY_ARCH, "--dropout", "0", "--criterion", "makd", "--cpu", "--seed", "1", "--optimizer", "adam",
            "--lr", "0.001", "--max-tokens", "512", "--max-update", str(UPDATES), "--log-format", "simple",
            "--log-interval", "1", "--num-workers", "0", "--no-progress-bar", "--save-dir", str(save_dir),
            "--no-epoch-checkpoints", "--disable-validation"]


def test_two_processes_equal_one_with_update_freq_two(mt_data, teacher, student, tmp_path):
    single = run(*makd_args(mt_data, teacher, student, tmp_path / "single"), "--update-freq", "2")
    port = free_port()
    ranks = [
        subprocess.Popen(
            [*makd_args(mt_data, teacher, student, tmp_path / "ddp"), "--distributed-backend", "gloo",
             "--ddp-backend", "legacy_ddp", "--distributed-world-size", "2", "--distributed-no-spawn",
             "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-rank", str(rank)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in ranks]
    assert all(p.returncode == 0 for p in ranks), outs[0][1][-3000:] + outs[1][1][-3000:]
    ddp_log = outs[0][0] + outs[0][1]
    one, two = per_update(single.stdout + single.stderr), per_update(ddp_log)
    assert len(one) == len(two) == UPDATES
    for a, b in zip(one, two):
        for name in NAMES:
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-6), (name, a, b)
    # the DDP-wrapped model is the student alone: the teacher is neither wrapped nor all-reduced
    params = [re.search(r"num\. shared model params: ([\d,]+)", log).group(1)
              for log in (single.stdout + single.stderr, ddp_log)]
    assert params[0] == params[1]
    student_params = torch.load(student)["makd"]["student_params"]  # counted by makd-init on the model
    assert int(params[1].replace(",", "")) == student_params
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoint_last.pt"]  # rank 0 writes, once


WORKER = str(__import__("pathlib").Path(__file__).with_name("ddp_worker.py"))


def test_pytorch_ddp_wrapping_two_processes_equal_one(mt_data, teacher, student, tmp_path):
    """The student (and the criterion, when it owns parameters) in torch's DistributedDataParallel as fairseq's
    default --ddp-backend pytorch_ddp wraps them on a GPU (fairseq itself cannot on CPU: it passes device_ids), with
    find_unused_parameters off as fairseq's default: two gloo processes equal one, with terms of weight 0 present
    and with parameters that get no gradient at all (the matrix aspect alone)."""
    import sys

    args = [str(mt_data), str(teacher), str(student)]
    run(sys.executable, WORKER, "0", "1", "0", *args, tmp_path / "one.pt")
    port = str(free_port())
    ranks = [subprocess.Popen([sys.executable, WORKER, str(r), "2", port, *args, str(tmp_path / "two.pt")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=600) for p in ranks]
    assert all(p.returncode == 0 for p in ranks), outs[0][1][-3000:] + outs[1][1][-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and len(one) == 3
    for name in one:
        a, b = one[name], two[name]
        assert len(b["losses"]) == len(a["losses"]) == 3
        assert b["losses"] == pytest.approx(a["losses"], rel=1e-5), name
        assert a["moved"] > 1e-4 and b["moved"] > 1e-4, name  # the updates trained something
        assert set(b["params"]) == set(a["params"]), (name, set(b["params"]) ^ set(a["params"]))
        for key, value in a["params"].items():
            assert torch.allclose(b["params"][key], value, rtol=1e-4, atol=1e-6), (name, key)
    assert any(k.startswith("projections.") for k in one["narrow dense, criterion with parameters"]["params"])
