"""``unmask study``: what it plans, a tiny study interrupted and resumed, its report, its errors."""

import json
from pathlib import Path

import pytest

from unmask.checkpoint import read_state, resolve_checkpoint
from unmask.checkpoint.layout import train_seconds
from unmask.cli import main
from unmask.config import ConfigError
from unmask.evaluate import EvalConfig, EvalReport, LikelihoodResult, plotting
from unmask.study import OBJECTIVES, StudyError, StudyResult, available_objectives, orderings, plan_study, rows, study
from unmask.study.runner import RunRecord
from unmask.train import Trainer
from unmask.validation import validate

BASELINES = ["ar", "mdlm", "sedd", "d3pm"]


def _bd3lm_available(plan) -> bool:
    config = plan.runs[0][1]
    config.objective.name = "bd3lm"
    try:
        validate(config)
    except ConfigError:
        return False
    return True


def test_the_plan_is_one_ordinary_run_per_model(corpus_file, tiny_overrides):
    plan = plan_study("tiny", data=str(corpus_file), budget=2.5, overrides=tiny_overrides, ablations=True)
    names = [entry.name for entry, _ in plan.runs]
    assert names[:len(names) - 6] == available_objectives(plan.base)
    assert set(BASELINES) <= set(names) and ("bd3lm" in names) == _bd3lm_available(plan)
    assert set(plan.skipped) == set(OBJECTIVES) - set(names)  # said, with the reason, not silently dropped
    configs = {entry.name: config for entry, config in plan.runs}
    assert all(c.train.max_minutes == 2.5 and c.data.source == str(corpus_file) for c in configs.values())
    assert configs["sedd"].model.time_conditioning and configs["sedd"].objective.time_steps == 0
    assert configs["d3pm"].objective.time_steps == 1000 and configs["mdlm-T10"].objective.time_steps == 10
    no_zero = configs["mdlm-T1000-no-carry-over-no-zero-masking"].objective
    assert not no_zero.carry_over and not no_zero.zero_masking and no_zero.time_steps == 1000
    # Everything but what makes each model itself is shared.
    shared = configs["mdlm"].to_dict()
    for name, config in configs.items():
        differs = {f"{s}.{k}" for s, keys in config.to_dict().items() for k, v in keys.items() if shared[s][k] != v}
        assert differs <= {"objective.name", "objective.discrete_steps", "objective.carry_over",
                           "objective.zero_masking", "model.time_conditioning"}, name

    only = plan_study("tiny", budget=1, objectives=["d3pm", "ar"], overrides=tiny_overrides)
    assert [entry.name for entry, _ in only.runs] == ["ar", "d3pm"]  # the table's order
    with pytest.raises(StudyError, match="unknown objective 'gpt'"):
        plan_study("tiny", budget=1, objectives=["gpt"])
    with pytest.raises(StudyError, match="drop objective.name=sedd"):
        plan_study("tiny", budget=1, overrides=["objective.name=sedd"])
    with pytest.raises(StudyError, match="budget"):
        plan_study("tiny", budget=0)
    if not _bd3lm_available(plan):
        with pytest.raises(StudyError, match="objective 'bd3lm' cannot run with this unmask"):
            plan_study("tiny", budget=1, objectives=["bd3lm"])


def test_orderings_judge_each_neighbouring_pair_by_its_standard_error():
    table = [{"name": name, "nats_per_token": value, "combined_se": 0.01}
             for name, value in (("ar", 2.0), ("mdlm", 2.2), ("sedd", 2.15), ("mdlm-T10", 2.5))]
    pairs = {(p["better"], p["worse"]): p for p in orderings(table)}
    assert set(pairs) == {("ar", "mdlm"), ("mdlm", "sedd"), ("mdlm", "mdlm-T10")}  # d3pm and T = 1000/100 absent
    assert pairs[("ar", "mdlm")]["holds"] and pairs[("ar", "mdlm")]["z"] == pytest.approx(0.2 / 0.01414, rel=1e-3)
    assert pairs[("ar", "mdlm")]["verdict"] == "held"
    assert not pairs[("mdlm", "sedd")]["holds"] and pairs[("mdlm", "sedd")]["verdict"] == "reversed"  # z = -3.5


def _trained_steps(run_dir):
    return read_state(resolve_checkpoint(run_dir))["step"]


@pytest.mark.slow
def test_an_interrupted_study_continues_where_it_stopped(tmp_path, corpus_file, tiny_overrides, monkeypatch, capsys):
    """Ctrl-C during the third model: the first two stay done, the third resumes from its checkpoint,
    the fourth starts; a third call retrains and re-evaluates nothing."""
    out = tmp_path / "study"
    kwargs = dict(out=out, budget=30, data=str(corpus_file), objectives=BASELINES,
                  overrides=[*tiny_overrides, "train.max_steps=4"], evaluation=EvalConfig(num_t=2, max_batches=2),
                  progress=False)
    original = Trainer.train_step

    def interrupt_sedd(self, batch):
        if self.config.objective.name == "sedd" and self.step == 2:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupt_sedd)
    result, written = study("tiny", **kwargs)
    assert result.interrupted == "sedd" and written == []
    assert _trained_steps(out / "ar") == _trained_steps(out / "mdlm") == 4 and _trained_steps(out / "sedd") == 2
    assert not (out / "d3pm").exists() and not (out / "study.md").exists()
    done = {name: resolve_checkpoint(out / name).stat().st_mtime_ns for name in ("ar", "mdlm")}

    monkeypatch.setattr(Trainer, "train_step", original)
    capsys.readouterr()
    result, written = study("tiny", **kwargs)
    printed = capsys.readouterr().out
    assert "== ar: trained" in printed and "== mdlm: trained" in printed
    assert "== sedd: resuming" in printed and "== d3pm: training" in printed
    assert {name: resolve_checkpoint(out / name).stat().st_mtime_ns for name in ("ar", "mdlm")} == done
    sedd_steps = [json.loads(line)["step"] for line in (out / "sedd" / "metrics.jsonl").read_text().splitlines()]
    assert sedd_steps == [1, 2, 2, 3, 4, 4]  # steps 1-2 and the interrupt, then 3-4 (logged, then validated)
    assert all(_trained_steps(out / name) == 4 for name in BASELINES)
    tokenizers = {tuple((f.name, f.read_bytes()) for f in sorted((out / name / "tokenizer").iterdir()))
                  for name in BASELINES}
    assert len(tokenizers) == 1  # one tokenization for every model
    assert [path.name for path in written] == ["study.md", "study.json", "study.png"]

    table = (out / "study.md").read_text()
    for label in ("AR (same backbone) | 3.", "MDLM | <= ", "SEDD (absorbing) | <= ", "D3PM (absorbing) | <= "):
        assert label in table
    assert "- ar < mdlm:" in table and "- sedd < d3pm:" in table
    record = json.loads((out / "study.json").read_text())
    assert [row["name"] for row in record["rows"]] == BASELINES
    assert all(row["steps"] == 4 and row["training_tokens"] == 4 * 8 * 32 and row["stderr"] > 0
               for row in record["rows"])
    assert record["rows"][0]["exact"] and not record["rows"][1]["exact"]

    # Without matplotlib the table still comes; nothing is trained or evaluated again.
    (out / "study.png").unlink()
    real = plotting.importlib.util.find_spec
    monkeypatch.setattr(plotting.importlib.util, "find_spec", lambda n: None if n == "matplotlib" else real(n))
    capsys.readouterr()
    with pytest.warns(UserWarning, match="no plot written"):
        _, written = study("tiny", **kwargs)
    printed = capsys.readouterr().out
    assert "evaluating" not in printed and "training" not in printed and "resuming" not in printed
    assert [path.name for path in written] == ["study.md", "study.json"] and not (out / "study.png").exists()
    assert json.loads((out / "study.json").read_text())["rows"] == record["rows"]


@pytest.mark.slow
def test_the_budget_ends_each_run_and_a_larger_budget_continues_it(tmp_path, corpus_file, tiny_overrides):
    out = tmp_path / "study"
    kwargs = dict(out=out, data=str(corpus_file), objectives=["mdlm"], overrides=tiny_overrides,
                  evaluation=EvalConfig(num_t=1, max_batches=1), progress=False)
    study("tiny", budget=0.005, **kwargs)
    state = read_state(resolve_checkpoint(out / "mdlm"))
    assert train_seconds(state) >= 0.3 and state["step"] >= 1
    study("tiny", budget=0.005, **kwargs)
    assert read_state(resolve_checkpoint(out / "mdlm"))["step"] == state["step"]  # done: skipped
    budget = train_seconds(state) / 60 + 0.005  # 0.3 s more than the run has had
    study("tiny", budget=budget, **kwargs)
    longer = read_state(resolve_checkpoint(out / "mdlm"))
    assert longer["step"] > state["step"] and train_seconds(longer) >= 60 * budget - 0.01
    with pytest.raises(StudyError, match=r"another configuration \(optim.lr: 0.001 -> 0.01\)"):
        study("tiny", budget=budget, **{**kwargs, "overrides": [*tiny_overrides, "optim.lr=0.01"]})


def test_study_errors_are_one_line(tmp_path, corpus_file, tiny_overrides, capsys):
    base = ["study", "tiny", "--data", str(corpus_file), "--out", str(tmp_path / "s"), "--budget", "1"]
    for argv, message in (([*base, "--objectives", "ar,gpt"], "expected comma-separated names from"),
                          ([*base, "objective.discrete_steps=10"], "the study sets each run's objective itself"),
                          ([*base[:-2], "--budget", "0"], "must be in (0.0, inf)"),
                          ([*base, "--budget-tokens", "100"], "give one budget: --budget MINUTES"),
                          ([*base, "--seeds", "0"], "must be at least 1")):
        try:
            code = main(argv)
        except SystemExit as stop:  # refused while parsing
            code = stop.code
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert message in err and len(err.splitlines()) == 1, err
    assert set(OBJECTIVES) >= set(BASELINES)


def test_a_token_budget_and_seeds_plan_every_run(corpus_file, tiny_overrides):
    plan = plan_study("tiny", budget_tokens=10_000, seeds=3, data=str(corpus_file), objectives=["mdlm", "ar"],
                      overrides=tiny_overrides)
    assert plan.base.train.max_steps == 40 and plan.base.train.max_minutes is None  # ceil(10,000 / (8 x 32))
    runs = plan.seed_runs()
    assert [(run.name, run.seed) for run in runs] == [("ar", 0), ("mdlm", 0), ("ar-seed1", 1), ("mdlm-seed1", 1),
                                                      ("ar-seed2", 2), ("mdlm-seed2", 2)]
    assert all(run.config.train.max_steps == 40 for run in runs)
    shifted = plan_study("tiny", budget=1, seeds=2, objectives=["mdlm"], overrides=[*tiny_overrides, "train.seed=5"])
    assert [(run.name, run.seed) for run in shifted.seed_runs()] == [("mdlm", 5), ("mdlm-seed6", 6)]
    for kwargs, message in ((dict(budget=1, budget_tokens=100), "give one budget"), ({}, "give one budget"),
                            (dict(budget_tokens=100, overrides=["train.max_steps=3"]), "drop train.max_steps=3"),
                            (dict(budget=1, seeds=0), "at least 1")):
        with pytest.raises(StudyError, match=message):
            plan_study("tiny", **kwargs)


def _record(name, seed, value, stderr):
    likelihood = LikelihoodResult(value, stderr, 1000, 10, 1, 0)
    report = EvalReport(checkpoint="c", objective=name, exact=name == "ar", data="d", split="validation",
                        detokenizer=None, length=32, tokenizer="char", likelihood=likelihood)
    return RunRecord(entry=OBJECTIVES[name], seed=seed, run_dir=Path(f"{name}-seed{seed}"), step=4,
                     train_seconds=60.0, tokens=1024, report=report)


def test_seeds_give_a_mean_a_spread_and_orderings_that_count_it():
    records = [_record("mdlm", 0, 5.0, 0.02), _record("mdlm", 1, 5.3, 0.02), _record("mdlm", 2, 5.6, 0.02),
               _record("sedd", 0, 5.4, 0.02), _record("sedd", 1, 5.5, 0.02), _record("sedd", 2, 5.6, 0.02),
               _record("ar", 0, 4.0, 0.01), _record("ar", 1, 4.1, 0.01), _record("ar", 2, 4.0, 0.01)]
    table = {row["name"]: row for row in rows(StudyResult(records=records))}
    mdlm = table["mdlm"]
    assert mdlm["nats_per_token"] == pytest.approx(5.3) and mdlm["seed_sd"] == pytest.approx(0.3)
    assert mdlm["stderr"] == pytest.approx(0.02 / 3**0.5) and mdlm["seeds"] == 3
    assert mdlm["combined_se"] == pytest.approx((0.3**2 / 3 + 0.02**2 / 3) ** 0.5)
    assert [r["seed"] for r in mdlm["per_seed"]] == [0, 1, 2]
    pairs = {(p["better"], p["worse"]): p for p in orderings(list(table.values()))}
    # MDLM is 0.2 below SEDD on average, but its seeds spread 0.3: undecided (the evaluation alone would say z = 7).
    assert pairs[("mdlm", "sedd")]["verdict"] == "undecided" and abs(pairs[("mdlm", "sedd")]["z"]) < 2
    assert pairs[("ar", "mdlm")]["verdict"] == "held"
    one = rows(StudyResult(records=[_record("mdlm", 0, 5.0, 0.02)]))[0]
    assert one["seed_sd"] is None and one["combined_se"] == pytest.approx(0.02)  # one seed: the evaluation's alone


@pytest.mark.slow
def test_a_study_with_seeds_and_a_token_budget_trains_each_run_to_the_same_tokens(tmp_path, corpus_file,
                                                                                  tiny_overrides, capsys):
    out = tmp_path / "study"
    kwargs = dict(out=out, data=str(corpus_file), objectives=["ar", "mdlm"], overrides=tiny_overrides,
                  evaluation=EvalConfig(num_t=1, max_batches=1), progress=False, budget_tokens=3 * 8 * 32)
    result, written = study("tiny", seeds=2, **kwargs)
    assert sorted(path.name for path in out.iterdir() if (path / "checkpoints").is_dir()) == [
        "ar", "ar-seed1", "mdlm", "mdlm-seed1"]
    assert all(_trained_steps(out / name) == 3 for name in ("ar", "ar-seed1", "mdlm", "mdlm-seed1"))
    record = json.loads((out / "study.json").read_text())
    assert record["seeds"] == 2 and record["budget_tokens"] == 768 and record["budget_minutes"] is None
    mdlm = record["rows"][1]
    assert mdlm["seeds"] == 2 and mdlm["seed_sd"] > 0 and mdlm["training_tokens"] == 768
    assert mdlm["per_seed"][0]["nats_per_token"] != mdlm["per_seed"][1]["nats_per_token"]  # other seeds, other runs
    table = (out / "study.md").read_text()
    assert "on 768 training tokens each (3 steps of 8 x 32), 2 times each with train.seed = 0 to 1" in table
    assert "| seed s.d. | seeds |" in table and "- ar < mdlm: " in table
    assert record["orderings"][0]["verdict"] in ("held", "reversed", "undecided")

    capsys.readouterr()
    study("tiny", seeds=3, **kwargs)  # one more seed: only its runs train
    printed = capsys.readouterr().out
    assert "== ar: trained" in printed and "== mdlm-seed1: trained" in printed
    assert "== ar-seed2: training to step 3" in printed and "== mdlm-seed2: training to step 3" in printed
    assert json.loads((out / "study.json").read_text())["rows"][0]["seeds"] == 3
