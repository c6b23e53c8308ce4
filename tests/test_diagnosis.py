"""Issue 34's diagnosis: students trained and reported on validation only, and the three checkpoint choices read from
one validation curve."""

import json
import sys

from conftest import ROOT, run
from benchmarks.diagnosis import settles, stopped_on_nll, summarize

# [updates, valid nll, valid metric]: nll lowest at 400, metric highest at 600
CURVE = [[100, 5.0, 10.0], [200, 4.0, 12.0], [300, 3.5, 13.0], [400, 3.4, 14.0], [500, 3.45, 15.0],
         [600, 3.41, 16.0], [700, 3.6, 15.5], [800, 3.7, 15.0]]


def test_nll_stopping_rule_applied_to_a_curve_stops_where_fairseq_would():
    # patience 2: after 400 (lowest), 500 and 600 do not go lower -> stops at 600, keeps 400
    assert stopped_on_nll(CURVE, 2) == (5, 3)
    # patience 3: 500, 600, 700 -> stops at 700, keeps 400
    assert stopped_on_nll(CURVE, 3) == (6, 3)
    # patience past the curve: runs to its end
    assert stopped_on_nll(CURVE, 10) == (7, 3)


def test_a_curve_gives_the_checkpoint_of_each_rule_and_its_metric():
    s = summarize(CURVE, 2)
    assert s["best_nll"] == {"updates": 400, "nll": 3.4, "metric": 14.0}
    assert s["best_metric"] == {"updates": 600, "nll": 3.41, "metric": 16.0}
    assert s["stopped_on_nll"] == {"updates": 400, "nll": 3.4, "metric": 14.0, "stopped_at": 600}
    # up to a cap (a long run where the standard-cap runs end): the best metric among the validations until then
    assert summarize(CURVE, 2, cap=500)["best_metric_at_cap"] == {"cap": 500, "updates": 500, "nll": 3.45,
                                                                  "metric": 15.0}
    assert "best_metric_at_cap" not in s and summarize(CURVE, 2, cap=50)["best_metric_at_cap"] == {"cap": 50}
    no_metric = summarize([row[:2] + [None] for row in CURVE], 2)
    assert no_metric["best_metric"] is None and no_metric["stopped_on_nll"]["metric"] is None


def test_a_race_settles_where_the_best_so_far_order_stops_changing():
    # the method leads early (best so far 12 vs 10 at 200), CE from 300 on (13 vs 12), and at the cap
    method = [[100, 4.0, 11.0], [200, 3.8, 12.0], [300, 3.7, 11.5], [400, 3.6, 12.5], [500, 3.6, 12.9]]
    ce = [[100, 4.0, 9.0], [200, 3.8, 10.0], [300, 3.7, 13.0], [400, 3.6, 12.0], [500, 3.6, 13.5]]
    race = settles(method, ce, cap=500)
    assert race["picks"] == [[100, "method"], [200, "method"], [300, "baseline"], [400, "baseline"],
                             [500, "baseline"]]
    assert race["better"] == "baseline" and race["settled_at"] == 300 and race["compared_at"] == 500
    # a cap inside the curves: compared there; a ranking that flips at the last validation never settles early
    assert settles(method, ce, cap=200) == {"cap": 200, "compared_at": 200, "better": "method",
                                            "picks": [[100, "method"], [200, "method"]], "settled_at": 100}
    # a method still training (its curve ends at 300): compared at 300, not at the cap
    assert settles(method[:3], ce, cap=500)["compared_at"] == 300
    # ties go to the method
    assert settles(ce, ce, cap=500)["better"] == "method" and settles(ce, ce, cap=500)["settled_at"] == 100


def test_validation_only_run_trains_diagnosis_methods_and_decodes_nothing_on_test(mt_data, teacher, tmp_path):
    out, work = tmp_path / "diag.json", tmp_path / "work"
    run(sys.executable, "-m", "benchmarks.quality", "--task", "translation", "--data", mt_data, "--size", "smoke",
        "--teacher", teacher, "--work", work, "--budgets", "0.5", "--seeds", "1", "--methods", "svd_ce", "kd_alpha_0.5",
        "makd_no_layer", "--stopping", "6", "2", "2", "--select-on", "metric", "--validation-only", "--remove-bpe",
        "none", "--out", out, cwd=ROOT)
    result = json.loads(out.read_text())
    assert result["validation_only"] and result["stopping"] == {
        "max_update": 6, "patience": 2, "validate_interval_updates": 2}
    assert [m["method"] for m in result["methods"]] == ["svd_ce", "kd_alpha_0.5", "makd_no_layer"]
    assert "--kd-alpha" in result["methods"][1]["flags"] and "--eval-metric bleu" in result["checkpoint_selection"]
    for m in result["methods"]:
        (seed,) = m["seeds"]
        assert [row[0] for row in seed["curve"]] == list(range(2, seed["updates"] + 1, 2)), m["method"]
        assert all(row[2] is not None for row in seed["curve"])  # the BLEU of every validation
        assert seed["trained_at"]
    # nothing decoded on test; the teacher on the valid split, as the students' valid_bleu measures them
    assert sorted(p.name for p in (work / "generate").iterdir()) == ["teacher.valid.txt",
                                                                     "teacher.valid.txt.provenance.json"]
    assert "Generate valid with beam" in (work / "generate" / "teacher.valid.txt").read_text()
    assert set(result["teacher_valid"]) == {"bleu", "chrf"}
    report = tmp_path / "diagnosis"
    run(sys.executable, "-m", "benchmarks.diagnosis", out, "--out", report, cwd=ROOT)
    students = json.loads((tmp_path / "diagnosis.json").read_text())["students"]
    assert [s["method"] for s in students] == ["svd_ce", "kd_alpha_0.5", "makd_no_layer"]
    assert all(s["stopped_on_nll"]["stopped_at"] <= s["updates"] for s in students)
    md = (tmp_path / "diagnosis.md").read_text()
    assert "| translation | kd_alpha_0.5 | 50% | 1 | cpu | 6 / 2 / 2 |" in md
    teacher_bleu = result["teacher_valid"]["bleu"]
    assert json.loads((tmp_path / "diagnosis.json").read_text())["teacher_valid"] == {"translation": teacher_bleu}
    assert f"translation {teacher_bleu:.2f}" in md
    best = students[1]["best_metric"]["metric"]
    assert f"{best:.2f} = {best / teacher_bleu:.1%} (" in md
    assert (tmp_path / "diagnosis.png").stat().st_size > 0

    # the same work directory read without its results file: the same curves; a training whose log has not ended
    # (here: one log cut before fairseq's last lines) is marked in progress, the finished ones are not
    log = next(work.glob("b50/svd_ce/seed1/train.log"))
    text = log.read_text()
    log.write_text(text[:text.index("done training")].rsplit("\n", 1)[0] + "\n")
    partial = tmp_path / "in_progress"
    run(sys.executable, "-m", "benchmarks.diagnosis", "--in-progress", f"translation={work}", "--out", partial, cwd=ROOT)
    rows = json.loads((tmp_path / "in_progress.json").read_text())["students"]
    assert sorted(r["method"] for r in rows) == sorted(s["method"] for s in students)
    by_method = {s["method"]: s for s in students}
    for r in rows:
        assert r["in_progress"] == (r["method"] == "svd_ce") and r["curve"] == by_method[r["method"]]["curve"]
        assert r["stopping"] == result["stopping"] and r["best_metric"] == by_method[r["method"]]["best_metric"]
    md = (tmp_path / "in_progress.md").read_text()
    assert "| svd_ce | 50% | 1 | cpu | 6 / 2 / 2 | 6 (in progress)" in md and md.count("(in progress)") == 1
    # the same task from two work directories (standard-cap and long runs): both read, each student once
    twice = tmp_path / "twice"
    run(sys.executable, "-m", "benchmarks.diagnosis", "--in-progress", f"translation={work}", "--in-progress",
        f"translation={work}", "--cap", "4", "--out", twice, cwd=ROOT)
    rows = json.loads((tmp_path / "twice.json").read_text())["students"]
    assert sorted(r["method"] for r in rows) == sorted(s["method"] for s in students)
    assert all(r["best_metric_at_cap"]["updates"] <= 4 for r in rows)
    assert "best metric up to 4 (at)" in (tmp_path / "twice.md").read_text()
    # every student beside svd_ce: how long a race against it must be
    race = {r["method"]: r.get("race_against_svd_ce") for r in rows}
    assert race["svd_ce"] is None and all(race[m]["compared_at"] == 4 for m in ("kd_alpha_0.5", "makd_no_layer"))
    assert "A race against svd_ce" in (tmp_path / "twice.md").read_text()

    # an earlier report as an input (its work directories may be gone with a machine): its students kept as they
    # were; one still training then is interrupted, unless an --in-progress directory goes on with it
    earlier = tmp_path / "in_progress.json"
    kept = tmp_path / "kept"
    run(sys.executable, "-m", "benchmarks.diagnosis", earlier, "--out", kept, cwd=ROOT)
    rows = json.loads((tmp_path / "kept.json").read_text())["students"]
    assert [r["curve"] for r in rows] == [r["curve"] for r in json.loads(earlier.read_text())["students"]]
    md = (tmp_path / "kept.md").read_text()
    assert "| svd_ce | 50% | 1 | cpu | 6 / 2 / 2 | 6 (interrupted)" in md and "(in progress)" not in md
    going_on = tmp_path / "going_on"
    run(sys.executable, "-m", "benchmarks.diagnosis", earlier, "--in-progress", f"translation={work}", "--out",
        going_on, cwd=ROOT)
    rows = json.loads((tmp_path / "going_on.json").read_text())["students"]
    assert sorted(r["method"] for r in rows) == sorted(s["method"] for s in students)  # each student once
    assert [(r["in_progress"], r["interrupted"]) for r in rows if r["method"] == "svd_ce"] == [(True, False)]
    # the same directory as one that will not go on (its machine given back): the unfinished training interrupted
    run(sys.executable, "-m", "benchmarks.diagnosis", "--stopped", f"translation={work}", "--out", going_on, cwd=ROOT)
    rows = json.loads((tmp_path / "going_on.json").read_text())["students"]
    assert [(r["in_progress"], r["interrupted"]) for r in rows if r["method"] == "svd_ce"] == [(False, True)]
    assert "6 (interrupted)" in (tmp_path / "going_on.md").read_text()

    # an earlier report that had a student in progress, then the results file it finished in: the student once, finished
    run(sys.executable, "-m", "benchmarks.diagnosis", earlier, out, "--out", tmp_path / "finished", cwd=ROOT)
    rows = json.loads((tmp_path / "finished.json").read_text())["students"]
    assert sorted(r["method"] for r in rows) == sorted(s["method"] for s in students)
    assert not any(r.get("interrupted") or r.get("in_progress") for r in rows)

    # the same students trained on a GPU are other students, and race against the GPU's svd_ce
    report = json.loads(earlier.read_text())
    gpu = [dict(r, device="cuda") for r in report["students"]]
    gpu_ce = next(r for r in gpu if r["method"] == "svd_ce")
    gpu_ce["curve"] = [[n, nll, 100.0] for n, nll, _ in gpu_ce["curve"]]  # far ahead: it wins every race
    both = tmp_path / "both.json"
    both.write_text(json.dumps({**report, "students": report["students"] + gpu}))
    run(sys.executable, "-m", "benchmarks.diagnosis", both, "--out", tmp_path / "devices", cwd=ROOT)
    rows = json.loads((tmp_path / "devices.json").read_text())["students"]
    assert len(rows) == 2 * len(students)
    races = {(r["method"], r["device"]): r.get("race_against_svd_ce") for r in rows}
    assert races[("kd_alpha_0.5", "cuda")]["better"] == "baseline"
    curves = {(r["method"], r["device"]): r["curve"] for r in rows}
    assert races[("kd_alpha_0.5", "cpu")] == settles(curves[("kd_alpha_0.5", "cpu")], curves[("svd_ce", "cpu")], 3000)
    assert "| translation | kd_alpha_0.5 | 50% | 1 | cuda | 6 / 2 / 2 |" in (tmp_path / "devices.md").read_text()



def test_term_gradients_add_up_to_the_criterions_and_name_each_terms_pull(teacher, half_student, full_rank_student,
                                                                          mt_data, tmp_path):
    """benchmarks.term_grads: each term's gradient (the criterion with the other terms' weights at 0), its size
    against cross-entropy's and its cosines; the terms' gradients sum to the whole criterion's. A full-rank student
    is its teacher: every distillation term is 0 and pulls nowhere."""
    out = tmp_path / "term_grads"
    run(sys.executable, "-m", "benchmarks.term_grads", "--data", mt_data, "--teacher", teacher, "--students",
        f"half={half_student}", f"full={full_rank_student}", "--batches", "1", "--max-tokens", "512",
        "--set", "matrix_layers=all", "layer_layers=all", "--out", out, cwd=ROOT)
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["settings"] == {"matrix_layers": "all", "layer_layers": "all"}
    half, full = result["students"]["half"], result["students"]["full"]
    assert list(half["terms"]) == ["loss_ce", "loss_model", "loss_mha", "loss_ffn", "loss_attn", "loss_hidn"]
    assert half["sum_residual"] < 1e-4 and full["sum_residual"] < 1e-4
    ce = half["terms"]["loss_ce"]
    assert abs(ce["cos_ce"] - 1) < 1e-5 and ce["norm_vs_ce"] == 1.0
    assert all(r["grad_norm"] > 0 and -1 - 1e-6 <= r["cos_ce"] <= 1 + 1e-6 for r in half["terms"].values())
    for term in ("loss_mha", "loss_ffn", "loss_attn", "loss_hidn", "loss_model"):
        assert full["terms"][term]["value"] <= 1e-5 and full["terms"][term]["norm_vs_ce"] < 1e-3, term
    assert "| loss_attn |" in out.with_suffix(".md").read_text()


def test_students_train_on_the_device_asked_for():
    from argparse import Namespace

    from benchmarks.commands import device_flags, student_training

    on_cpu, on_gpu = Namespace(size="cpu"), Namespace(size="cpu", device="cuda")
    assert student_training(on_cpu).count("--cpu") == 1 and device_flags(on_cpu) == ["--cpu"]
    assert "--cpu" not in student_training(on_gpu) and device_flags(on_gpu) == []
    # the rest of the recipe is the same (fp32 on the GPU: the CPU size's numbers, not a half-precision run)
    assert [f for f in student_training(on_cpu) if f != "--cpu"] == student_training(on_gpu)
    gpu_size = Namespace(size="gpu", device="cuda")
    assert student_training(gpu_size).count("--fp16") == 1 and device_flags(gpu_size) == ["--fp16"]


def test_students_keep_every_checkpoint_benchmarks_averaging_scores(mt_data, teacher, half_student):
    """train_command keeps patience + 5 interval checkpoints: the best is at most PATIENCE validations back, and the
    five ending there are all on disk."""
    from argparse import Namespace

    from benchmarks.commands import AVERAGED_AT_MOST, flag_value, train_command

    for patience in (4, 8):
        args = Namespace(size="cpu", task="summarization", data=str(mt_data), stopping=(15000, 250, patience),
                         select_on="metric", generate_args="", remove_bpe="sentencepiece")
        cmd = train_command(args, str(teacher), str(half_student), ["--criterion", "label_smoothed_cross_entropy"],
                            "SAVE")
        assert flag_value(cmd, "--patience") == str(patience)
        assert flag_value(cmd, "--keep-interval-updates") == str(patience + AVERAGED_AT_MOST)
