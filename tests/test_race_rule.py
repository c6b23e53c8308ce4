"""benchmarks.race_rule: the race-length rule of docs/benchmarks.md read from the races' validation values."""
import json

from benchmarks.race_rule import main


def result(task, races):
    """A quality result holding word_kd_race / word_kd_race_full records: {seed: (short winner, short values,
    full values)}; the full race's winner the better end (the method on a tie)."""
    def record(seed, updates, values):
        winner = max(values, key=lambda m: (values[m], m == "svd_word_kd"))
        return {"seed": seed, "race": {"updates": updates, "selected_on": "bleu", "values": values, "winner": winner}}
    return {"task": task, "methods": [
        {"method": "word_kd_race", "budget": 0.5, "seeds": [record(s, 1000, v[0]) for s, v in races.items()]},
        {"method": "word_kd_race_full", "budget": 0.5, "seeds": [record(s, None, v[1]) for s, v in races.items()]},
        {"method": "word_kd_race", "budget": 0.25, "seeds": [record(1, 1000, {"svd_word_kd": 1.0, "svd_ce": 9.0})]}]}


def test_the_rule_is_decided_by_the_mean_cost_over_every_pair(tmp_path, capsys):
    kd, ce = "svd_word_kd", "svd_ce"
    a = result("summarization", {1: ({kd: 21.0, ce: 19.6}, {kd: 24.0, ce: 25.3}),  # kept kd, ce ended 1.3 ahead
                                 2: ({kd: 20.7, ce: 19.9}, {kd: 24.6, ce: 23.4})})  # kept kd, kd ended ahead: 0
    b = result("translation", {1: ({kd: 8.8, ce: 9.3}, {kd: 13.4, ce: 14.5})})
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, r in zip(paths, (a, b)):
        path.write_text(json.dumps(r))
    main([*map(str, paths), "--seeds", "1", "2", "--threshold", "0.4"])  # 1.3 / 4 pairs at least: not above 0.4
    out = capsys.readouterr().out.splitlines()
    assert out[2] == ("| summarization | 1 | svd_word_kd (1,000: svd_word_kd 21.0, svd_ce 19.6) | svd_ce (svd_word_kd "
                      "24.0, svd_ce 25.3) | +1.30 |")
    assert [line.split(" | ")[-1] for line in out[3:5]] == ["+0.00 |", "+0.00 |"]
    assert out[5] == "| mean over 3 pairs | | | | +0.43 |"  # 1.3 / 3; the 25% race is not read
    assert out[-1] == "Not decided: 1 pair not finished (translation seed 2)."
    b["methods"][0]["seeds"].append({"seed": 2, "race": {"updates": 1000, "selected_on": "bleu", "winner": ce,
                                                         "values": {kd: 9.0, ce: 9.1}}})
    b["methods"][1]["seeds"].append({"seed": 2, "race": {"updates": None, "selected_on": "bleu", "winner": kd,
                                                         "values": {kd: 14.0, ce: 13.8}}})
    paths[1].write_text(json.dumps(b))
    main([*map(str, paths), "--seeds", "1", "2"])  # costs 1.3, 0, 0, 0.2: mean 0.375 > 0.3
    assert capsys.readouterr().out.splitlines()[-1] == ("Decided: mean cost +0.38 > 0.3: the full race is "
                                                        "makd-compress's default.")
    main([*map(str, paths), "--seeds", "1", "2", "--threshold", "0.5"])
    assert capsys.readouterr().out.splitlines()[-1] == ("Decided: mean cost +0.38 <= 0.5: the word_kd_race race is "
                                                        "makd-compress's default.")


def test_a_file_that_does_not_read_is_one_error_and_exit_2(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing.json")])
    assert e.value.code == 2 and "missing.json" in capsys.readouterr().err


def test_the_rule_is_decided_early_once_the_missing_pairs_cannot_bring_the_mean_to_the_threshold(tmp_path, capsys):
    kd, ce = "svd_word_kd", "svd_ce"
    a = result("summarization", {1: ({kd: 21.0, ce: 19.6}, {kd: 24.0, ce: 25.3})})  # cost 1.3
    b = result("translation", {1: ({kd: 8.8, ce: 9.3}, {kd: 13.4, ce: 14.5})})       # cost 0
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, r in zip(paths, (a, b)):
        path.write_text(json.dumps(r))
    main([*map(str, paths), "--seeds", "1", "2"])  # 1.3 over four pairs: at least 0.325 > 0.3
    assert capsys.readouterr().out.splitlines()[-1] == (
        "Decided with 2 pairs not finished (summarization seed 2, translation seed 2): costs are never negative, so "
        "the mean over all 4 pairs is at least +0.33 > 0.3: the full race is makd-compress's default.")
    main([*map(str, paths), "--seeds", "1", "2", "3"])  # 1.3 over six pairs: at least 0.22, not above 0.3
    assert capsys.readouterr().out.splitlines()[-1].startswith("Not decided: 4 pairs not finished")


def test_a_race_on_the_nll_costs_the_kept_end_minus_the_lower_one(tmp_path, capsys):
    kd, ce = "svd_word_kd", "svd_ce"
    r = result("summarization", {1: ({kd: 3.0, ce: 3.1}, {kd: 3.2, ce: 2.9})})
    for m in r["methods"]:
        for s in m["seeds"]:
            s["race"]["selected_on"] = "nll_loss"
            s["race"]["winner"] = min(s["race"]["values"], key=s["race"]["values"].get)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(r))
    main([str(path), "--seeds", "1"])  # the short race kept kd (3.0), ce ended lower: 3.2 - 2.9
    assert capsys.readouterr().out.splitlines()[2].endswith("| +0.30 |")
