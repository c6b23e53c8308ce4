"""makd-teacher-data: sequence-level KD data from the teacher's beam search, checked against fairseq-generate."""

import hashlib
import json
import shutil

import pytest
import torch

from conftest import TRAIN_COMMON, USER_DIR, run
from makd_fairseq import teacher_data
from makd_fairseq.cli.teacher_data import main
from makd_fairseq.fairseq_logs import records

BEAM = ["--beam", "2", "--max-len-b", "40"]  # the fixture teacher loops to the length cap on a few sources


@pytest.fixture(scope="module")
def kd_data(mt_data, teacher, tmp_path_factory):
    """The real CLI, once: the fixture teacher's beam-2 outputs for the 400 train sources."""
    out = tmp_path_factory.mktemp("seq_kd") / "bin_kd"
    proc = run("makd-teacher-data", "--teacher", teacher, "--data", mt_data, "--out", out, *BEAM,
               "--batch-size", "64", "--shard-size", "150")
    assert "400 train targets" in proc.stdout, proc.stdout
    return out


def files(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


def targets(data, split="train"):
    from fairseq.data import indexed_dataset

    return [t.tolist() for t in indexed_dataset.make_dataset(str(data / f"{split}.en-de.de"), "mmap")]


def assert_teacher_outputs(kd_data, mt_data, teacher, split, n):
    """Every target of ``split`` in kd_data is what fairseq-generate writes for that split's sources."""
    from fairseq.data import Dictionary

    # --required-batch-size-multiple 1: fairseq's default of 8 drops the last batch's remainder (fairseq#5036)
    proc = run("fairseq-generate", mt_data, "--user-dir", USER_DIR, "--path", teacher, "--gen-subset", split,
               *BEAM, "--batch-size", "32", "--required-batch-size-multiple", "1", "--cpu", "--num-workers", "0")
    generated = {}
    for line in proc.stdout.splitlines():
        if line.startswith("H-"):
            i, _score, text = (line.split("\t") + [""])[:3]
            generated[int(i[2:])] = text
    dictionary = Dictionary.load(str(mt_data / "dict.de.txt"))
    kd = targets(kd_data, split)
    assert len(kd) == len(generated) == n
    assert all(t[-1] == dictionary.eos() for t in kd)
    # example i keeps source i and holds the teacher's best hypothesis for it (other batches, same sentences)
    assert [dictionary.string(torch.tensor(t[:-1])) for t in kd] == [generated[i] for i in range(n)]
    assert kd != targets(mt_data, split)  # the references are gone


def test_train_targets_are_what_fairseq_generate_writes_for_the_train_sources(kd_data, mt_data, teacher):
    assert_teacher_outputs(kd_data, mt_data, teacher, "train", 400)
    manifest = json.loads((kd_data / teacher_data.MANIFEST).read_text())
    assert manifest["sentences"] == {"train": 400} and manifest["splits"] == ["train"] and manifest["beam"] == 2
    assert manifest["command"].startswith("makd-teacher-data --teacher")


def test_sources_dictionaries_valid_and_test_are_copied_byte_for_byte(kd_data, mt_data):
    ours, theirs = files(kd_data), files(mt_data)
    copied = [n for n in theirs if n.startswith(("dict.", "valid.", "test.", "train.en-de.en."))]
    assert len(copied) == 12 and all(ours[n] == theirs[n] for n in copied)
    assert set(ours) == set(copied) | {"train.en-de.de.bin", "train.en-de.de.idx", teacher_data.MANIFEST}
    assert not (kd_data / teacher_data.PARTIAL).exists()


def test_splits_train_valid_also_gives_valid_the_teacher_outputs_and_keeps_test(kd_data, mt_data, teacher, tmp_path):
    out = tmp_path / "kd_valid"
    proc = run("makd-teacher-data", "--teacher", teacher, "--data", mt_data, "--out", out, "--splits", "train,valid",
               *BEAM)
    assert "400 train and 50 valid targets" in proc.stdout, proc.stdout
    assert_teacher_outputs(out, mt_data, teacher, "valid", 50)
    assert targets(out) == targets(kd_data)  # train as without --splits
    ours, theirs = files(out), files(mt_data)
    assert all(ours[n] == theirs[n] for n in theirs if n.startswith(("dict.", "test.", "train.en-de.en.",
                                                                       "valid.en-de.en.")))
    assert json.loads((out / teacher_data.MANIFEST).read_text())["sentences"] == {"train": 400, "valid": 50}


def test_a_student_distills_on_the_teacher_data_with_fairseq_train(kd_data, teacher, full_rank_student, tmp_path):
    """fairseq-train's makd task trains on BIN_KD's train targets, the teacher's outputs: a student that is the teacher
    (full rank) finds them far more likely than the references it is validated on (valid keeps its references)."""
    proc = run("fairseq-train", kd_data, "--user-dir", USER_DIR, "--task", "makd_translation", "--teacher-path",
               teacher, "--arch", "lowrank_transformer", "--finetune-from-model", full_rank_student,
               "--criterion", "makd", *TRAIN_COMMON, "--log-format", "json", "--dropout", "0", "--lr", "1e-6",
               "--max-update", "2", "--save-dir", tmp_path)
    assert f"loaded 400 examples from: {kd_data}/train.en-de.de" in proc.stdout
    logged = records(proc.stdout)
    train_nll = [float(r["nll_loss"]) for r in logged if "nll_loss" in r]  # per update, before its step
    valid_nll = [float(r["valid_nll_loss"]) for r in logged if "valid_nll_loss" in r]
    assert len(train_nll) == 2 and len(valid_nll) == 1, proc.stdout[-3000:]
    # measured: 2.6 bits on the teacher's outputs vs 5.0 on the references; trained on the references it is 5.0 vs 5.0
    assert train_nll[0] < 0.7 * valid_nll[0], (train_nll, valid_nll)
    assert (tmp_path / "checkpoint_last.pt").is_file()


def no_decoding(*args, **kwargs):
    raise AssertionError("decoded again")


def test_a_second_run_with_the_same_arguments_reuses_the_data(kd_data, mt_data, teacher, monkeypatch, capsys):
    before = files(kd_data)
    monkeypatch.setattr(teacher_data, "decode", no_decoding)  # reuse means no decoding at all
    assert main(["--teacher", str(teacher), "--data", str(mt_data), "--out", str(kd_data), *BEAM,
                              "--batch-size", "8"]) == 0  # the batch size does not change the outputs
    assert "reused" in capsys.readouterr().out and files(kd_data) == before


def test_an_interrupted_run_resumes_where_it_stopped(kd_data, mt_data, teacher, monkeypatch, capsys, tmp_path):
    out, calls = tmp_path / "kd", []
    decode = teacher_data.decode

    class Interrupted(Exception):
        pass

    def interrupted(*args, **kwargs):
        if len(calls) == 2:
            raise Interrupted
        calls.append(1)
        return decode(*args, **kwargs)

    argv = ["--teacher", str(teacher), "--data", str(mt_data), "--out", str(out), *BEAM, "--shard-size", "100"]
    monkeypatch.setattr(teacher_data, "decode", interrupted)
    with pytest.raises(Interrupted):
        main(argv)
    assert len(list((out / teacher_data.PARTIAL).glob("train-shard-*.json"))) == 2
    assert not (out / teacher_data.MANIFEST).exists() and not (out / "train.en-de.de.bin").exists()
    calls.clear()
    monkeypatch.setattr(teacher_data, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    assert main(argv) == 0
    assert "resuming: 200 of 400" in capsys.readouterr().out and len(calls) == 2
    resumed, whole = files(out), files(kd_data)
    assert resumed.pop(teacher_data.MANIFEST) and whole.pop(teacher_data.MANIFEST)  # command and time differ
    assert resumed == whole  # the same bytes as the uninterrupted run, other batches notwithstanding


def test_force_rebuilds_in_a_directory_of_other_files_and_leaves_them(kd_data, mt_data, teacher, capsys, tmp_path):
    out = tmp_path / "kd"
    out.mkdir()
    (out / "notes.txt").write_text("somebody's notes\n")
    argv = ["--teacher", str(teacher), "--data", str(mt_data), "--out", str(out), *BEAM]
    assert main(argv) == 2 and "pass --force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    assert (out / "notes.txt").read_text() == "somebody's notes\n"
    assert targets(out) == targets(kd_data)


def bad_inputs(tmp, mt_data, teacher, kd_data):
    text = tmp / "notes.txt"
    text.write_text("not a checkpoint\n")
    unsafe = tmp / "unsafe.pt"
    torch.save({"model": {}, "hook": print}, unsafe)
    lm = tmp / "lm.pt"  # the fixture teacher relabelled as a decoder-only model
    state = torch.load(teacher)
    state["cfg"]["model"].arch = state["cfg"]["model"]._name = "transformer_lm"
    torch.save(state, lm)
    other_vocab = tmp / "other_vocab"
    shutil.copytree(mt_data, other_vocab)
    lines = (other_vocab / "dict.de.txt").read_text().splitlines()
    (other_vocab / "dict.de.txt").write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
    foreign = tmp / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("somebody's notes\n")
    return {  # name: (flag overrides, the message's words)
        "teacher missing": (["--teacher", tmp / "nope.pt"], "nope.pt: no such checkpoint file"),
        "teacher not a checkpoint": (["--teacher", text], "not a readable fairseq checkpoint"),
        "teacher unsafe": (["--teacher", unsafe], "not allow-listed"),
        "decoder-only teacher": (["--teacher", lm], "'transformer_lm' is not an encoder-decoder model"),
        "data missing": (["--data", tmp / "nope"], "nope: no such directory"),
        "dictionary differs": (["--data", other_vocab], "its tgt dictionary"),
        "out is the data": (["--out", mt_data], "is the --data directory itself"),
        "out holds other files": (["--out", foreign], "is not a makd-teacher-data directory; pass --force"),
        "out made with another beam": (["--out", kd_data, "--beam", "3"], "other arguments (beam 2 vs 3)"),
        "out made for other splits": (["--out", kd_data, "--splits", "train,valid"],
                                      "splits ['train'] vs ['train', 'valid']"),
    }


@pytest.mark.parametrize("case", ["teacher missing", "teacher not a checkpoint", "teacher unsafe",
                                  "decoder-only teacher", "data missing", "dictionary differs", "out is the data",
                                  "out holds other files", "out made with another beam",
                                  "out made for other splits"])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, mt_data, teacher, kd_data, tmp_path, capsys):
    overrides, message = bad_inputs(tmp_path, mt_data, teacher, kd_data)[case]
    flags = {"--teacher": teacher, "--data": mt_data, "--out": tmp_path / "out", **dict(zip(BEAM[::2], BEAM[1::2]))}
    flags.update(zip(overrides[::2], overrides[1::2]))
    watched = [kd_data, mt_data, tmp_path / "foreign"]
    before = [files(d) for d in watched]
    capsys.readouterr()
    rc = main([str(a) for flag in flags.items() for a in flag])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("makd-teacher-data: error: "), err
    assert message in err, err
    assert [files(d) for d in watched] == before and not (tmp_path / "out").exists()


def test_carry_moves_the_data_as_its_targets_and_rebuilds_the_rest_byte_for_byte(kd_data, mt_data, tmp_path):
    """benchmarks.carry packs a work directory's sequence-KD data as the teacher's targets and manifest only (the rest
    is copied from the data directory the manifest names) and unpacks it into another work directory byte for byte,
    the manifest written; an unpack where the data exists is refused."""
    from benchmarks import carry

    began, work = tmp_path / "a", tmp_path / "b"
    shutil.copytree(kd_data, began / "seq_kd_data")
    (began / "seq_kd_data.log").write_text("the stage's log\n")
    work.mkdir()
    assert carry.main(["pack", str(began), str(tmp_path / "tars")]) == 0
    tar = tmp_path / "tars" / "seq_kd_data.tar"
    import tarfile

    with tarfile.open(tar) as t:
        assert sorted(t.getnames()) == ["seq_kd_data.log", "seq_kd_data/teacher_data.json",
                                        "seq_kd_data/train.en-de.de.bin", "seq_kd_data/train.en-de.de.idx"]
    assert carry.main(["unpack", str(work), str(tar)]) == 0
    assert files(work / "seq_kd_data") == files(kd_data)
    assert (work / "seq_kd_data.log").read_text() == "the stage's log\n"
    assert carry.main(["unpack", str(work), str(tar)]) == 2
    assert files(work / "seq_kd_data") == files(kd_data)
    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as t:
        t.add(tmp_path / "a" / "seq_kd_data.log", arcname="notes.txt")
    with pytest.raises(SystemExit) as exit_:  # no such work directory: argparse's one-line error
        carry.main(["unpack", str(tmp_path / "c"), str(foreign)])
    assert exit_.value.code == 2
    (tmp_path / "c").mkdir()
    assert carry.main(["unpack", str(tmp_path / "c"), str(foreign)]) == 2 and not any((tmp_path / "c").iterdir())
