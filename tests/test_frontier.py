"""The sampler frontier: labels, the sweep on tiny untrained checkpoints, table, plot, JSON and CLI."""

import json

import pytest
import torch
from runs import untrained_run

from unmask.cli import main
from unmask.evaluate import frontier, plotting
from unmask.evaluate.frontier import FrontierPoint, format_table, parse_sampler, run_frontier, sweep, write_table

LENGTH = 16
SAMPLERS = ("cached", "first_hitting", "threshold-0.5", "remdm-cap")
STEPS = (4, 8)


def _checkpoint(root, objective):
    """An untrained one-layer model on the char tokenizer, saved as a run directory."""
    return untrained_run(root, objective, length=LENGTH, seed=0 if objective == "mdlm" else 1)[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontier_runs")
    return _checkpoint(root, "mdlm"), _checkpoint(root, "ar")


@pytest.fixture(scope="module")
def swept(runs, tmp_path_factory):
    mdlm, ar = runs
    out = tmp_path_factory.mktemp("frontier_out")
    points, _ = run_frontier(mdlm, out_dir=out, evaluator=str(ar), samplers=SAMPLERS, steps=STEPS, num_samples=4,
                             batch_size=4, length=LENGTH, device="cpu")
    return points, out


# --- sampler labels ------------------------------------------------------------------------------


def test_labels_map_to_generate_options():
    assert parse_sampler("ancestral").sampler == "ancestral"
    assert parse_sampler("first_hitting").sampler == "first_hitting"
    margin = parse_sampler("margin")
    assert (margin.sampler, margin.order, margin.threshold) == ("cached", "margin", None)
    threshold = parse_sampler("threshold-0.9")
    assert (threshold.order, threshold.threshold) == ("confidence", 0.9)
    assert parse_sampler("remdm-conf").remasking.strategy == "conf"
    assert parse_sampler("remdm-loop").remasking.eta == 0.02
    assert parse_sampler("remdm-cap-0.05").remasking.eta == 0.05


@pytest.mark.parametrize("label", ["nucleus", "threshold-x", "threshold-1.5", "remdm-foo", "remdm-cap-2", "random"])
def test_unknown_labels_list_the_valid_forms(label):
    with pytest.raises(ValueError, match="valid forms: ancestral, cached, first_hitting.*threshold-TAU.*remdm-cap"):
        parse_sampler(label)


# --- the sweep -----------------------------------------------------------------------------------


def test_run_frontier_writes_one_point_per_sampler_and_steps(swept):
    points, out = swept
    png = (out / "frontier.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    record = json.loads((out / "frontier.json").read_text())
    assert record["length"] == LENGTH and record["num_samples"] == 4 and record["evaluator"].endswith("run_ar")
    keys = [(p["sampler"], p["steps"]) for p in record["points"]]
    assert len(keys) == len(set(keys)) == len(points) == 3 * len(STEPS) + 1
    assert {(s, t) for s in SAMPLERS if s != "first_hitting" for t in STEPS} < set(keys)
    by_key = {(p.sampler, p.steps): p for p in points}
    for steps in STEPS:
        assert 1 <= by_key["cached", steps].num_calls <= steps
    (hitting,) = [p for p in points if p.sampler == "first_hitting"]
    assert hitting.num_calls == hitting.steps == LENGTH - 1  # one call per generated token (BOS is fixed)
    for p in points:
        assert p.num_samples == 4 and p.gen_ppl > 1 and 0 < p.entropy <= torch.log(torch.tensor(LENGTH - 1.0))
        assert p.seconds > 0
    table = (out / "frontier.md").read_text()
    assert [cell.strip() for cell in table.splitlines()[0].split("|")[1:-1]] == list(frontier.COLUMNS)
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == sorted(rows) and len(rows) == len(points)


def test_same_seed_same_samples_and_cached_calls_less(runs):
    """The cached sampler draws each position's step at once (the ancestral distribution, other draws): a seed
    repeats its point, and it calls the network only where something unmasks."""
    mdlm, ar = runs
    points = sweep(mdlm, evaluator=str(ar), samplers=["ancestral", "cached", "cached"], steps=[6, 6], num_samples=3,
                   batch_size=2, device="cpu").points
    ancestral, cached = points  # duplicates dropped
    assert ancestral.num_calls == 6 >= cached.num_calls  # mean over the batches of 2 and 1 samples
    again = sweep(mdlm, evaluator=str(ar), samplers=["cached"], steps=[6], num_samples=3, batch_size=2,
                  device="cpu").points[0]
    assert (again.gen_ppl, again.entropy, again.num_calls) == (cached.gen_ppl, cached.entropy, cached.num_calls)


def test_errors(runs, tmp_path, monkeypatch):
    mdlm, ar = runs
    with pytest.raises(ValueError, match="AR checkpoint"):
        sweep(ar, evaluator=str(ar), samplers=["cached"], steps=[2], num_samples=1, device="cpu")
    with pytest.raises(ValueError, match="step counts"):
        sweep(mdlm, evaluator=str(ar), samplers=["cached"], steps=[0], device="cpu")
    real = plotting.importlib.util.find_spec
    monkeypatch.setattr(plotting.importlib.util, "find_spec", lambda n: None if n == "matplotlib" else real(n))
    with pytest.warns(UserWarning, match=r'no plot written: it needs matplotlib \(pip install "unmask\[plot\]"\)'):
        points, written = run_frontier(mdlm, out_dir=tmp_path, evaluator=str(ar), samplers=["cached"], steps=[2],
                                       device="cpu")
    assert written == [tmp_path / "frontier.json", tmp_path / "frontier.md"] and len(points) == 1
    assert (tmp_path / "frontier.json").is_file() and not (tmp_path / "frontier.png").exists()


def test_markdown_table(tmp_path):
    points = [FrontierPoint("confidence", 8, 8.0, 0.5, 30.0, 2.0, 4),
              FrontierPoint("cached", 16, 9.5, 0.2, 40.0, 2.5, 4), FrontierPoint("cached", 8, 7.0, 0.1, 45.0, 2.4, 4)]
    lines = write_table(points, tmp_path / "f.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["cached", "cached", "confidence"]
    assert "| cached     |    16 |   9.5 |" in format_table(points)


# --- the command line ----------------------------------------------------------------------------


def test_cli_prints_the_table_and_the_paths(runs, tmp_path, capsys):
    mdlm, ar = runs
    out = tmp_path / "cli"
    assert main(["frontier", str(mdlm), "--evaluator", str(ar), "--samplers", "cached,first_hitting",
                 "--steps", "4", "--num-samples", "2", "--out", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "| sampler" in captured.out and "| first_hitting |" in captured.out
    assert f"wrote {out / 'frontier.png'}" in captured.out and (out / "frontier.png").is_file()
    assert "cached steps=4" in captured.err  # progress, one line per point

    assert main(["frontier", str(mdlm), "--evaluator", str(ar), "--samplers", "cached,bogus",
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown sampler 'bogus'" in err and len(err.splitlines()) == 1
