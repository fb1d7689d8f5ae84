"""lm-evaluation-harness through unmask, offline: local tasks (a last-word cloze of held-out text, a two-choice
task, a generation task with stop sequences, a rolling-likelihood task) on a tiny trained MDLM and the AR
baseline, every answer checked against ``unmask.conditional_nelbo``, ``generate_text`` and ``unmask eval``;
the three request types at batch sizes 1 and 16; the command line."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import CORPUS, TINY
from runs import untrained_run

import unmask
from unmask.cli import main
from unmask.evaluate import EvalConfig, evaluate_checkpoint
from unmask.evaluate.conditional import content_seed, encode_pair, score_continuations
from unmask.evaluate.harness import HarnessModel, continuation_text
from unmask.sampling import SamplerConfig

# Held out: none of it is in the training corpus.
HELD_OUT = [
    "it is a truth well known to all the world",
    "she was the youngest of the two daughters",
    "he had a great deal of money and no wife",
    "the house stood at the end of a long lane",
]
CHOICES = [
    {"question": "a man of good fortune must be in want of a", "choices": ["wife", "fish"], "label": 0},
    {"question": "however little known the feelings or", "choices": ["views", "boats"], "label": 0},
    {"question": "this truth is so well", "choices": ["cold", "fixed"], "label": 1},
]
# Short enough that prompt and answer fit the tiny models' 32 tokens: nothing is cut from the prompt.
QUESTIONS = [{"question": "who wants a wife", "answer": "a single man"},
             {"question": "what is fixed", "answer": "this truth"}]
PAGES = ["It is a truth universally acknowledged, that a single man in possession of a good fortune.",
         "The feelings or views of such a man may be little known on his first entering a neighbourhood."]

TASKS = {
    "toy_cloze": """output_type: loglikelihood
doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
doc_to_target: "{{' '+text.split(' ')[-1]}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
    "toy_choice": """output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
    "toy_gen": """output_type: generate_until
doc_to_text: "q: {{question}}\\na:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until:
    - "\\n"
    - "."
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
    "toy_pages": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{page}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
""",
}
DOCUMENTS = {"toy_cloze": [{"text": text} for text in HELD_OUT], "toy_choice": CHOICES, "toy_gen": QUESTIONS,
             "toy_pages": [{"page": page} for page in PAGES]}


def write_tasks(folder: Path) -> Path:
    """The four local tasks: a YAML file and a JSON-lines file of documents each, read offline by lm-eval."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(document) + "\n" for document in DOCUMENTS[name]))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {folder / 'hf-cache'}\ntest_split: test\n{body}metadata:\n  version: 1.0\n")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MDLM and the AR baseline trained on the test corpus, and the local tasks."""
    root = tmp_path_factory.mktemp("harness")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS * 3 for _ in range(20)))
    runs = {}
    for name in ("mdlm", "ar"):
        runs[name] = root / name
        assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(runs[name]), "--quiet",
                     "--max-steps", "6", *TINY, f"data.cache_dir={root / 'cache'}", f"objective.name={name}"]) == 0
    return runs, write_tasks(root / "tasks")


def _samples(results, task):
    return sorted(results["samples"][task], key=lambda sample: sample["doc_id"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mdlm", "ar"])
def test_lm_eval_runs_through_unmask_and_gives_unmask_s_numbers(trained, kind, tmp_path):
    """Every request lm-eval sends is answered with what unmask computes directly for it."""
    pytest.importorskip("lm_eval")
    from unmask.evaluate.harness import UnmaskLM, run_tasks

    runs, tasks = trained
    sampling = SamplerConfig(steps=8)
    model = UnmaskLM(runs[kind], num_t=4, batch_size=4, sampling=sampling, progress=False)
    results = run_tasks(model, list(TASKS), include_path=tasks, log_samples=True, bootstrap_iters=0)
    pipeline = model.pipeline

    cloze = _samples(results, "toy_cloze")
    assert len(cloze) == len(HELD_OUT)
    pairs = [sample["arguments"][0] for sample in cloze]
    assert [continuation for _, continuation in pairs] == [" " + text.split(" ")[-1] for text in HELD_OUT]
    direct = [unmask.conditional_nelbo(pipeline, context, continuation, num_t=4) for context, continuation in pairs]
    answers = [sample["resps"][0][0] for sample in cloze]
    assert [float(ll) for ll, _ in answers] == pytest.approx([-value for value in direct], rel=1e-6)
    scores = score_continuations(pipeline, [encode_pair(pipeline.tokenizer, *pair) for pair in pairs], num_t=4,
                                 greedy=True)
    assert [bool(greedy) for _, greedy in answers] == [score.greedy for score in scores]
    assert results["results"]["toy_cloze"]["acc,none"] == pytest.approx(sum(s.greedy for s in scores) / len(scores))

    for sample in _samples(results, "toy_choice"):
        lls = [float(resp[0][0]) for resp in sample["resps"]]
        context = sample["arguments"][0][0]
        choices = sample["doc"]["choices"]
        assert lls == pytest.approx([-unmask.conditional_nelbo(pipeline, context, " " + c, num_t=4) for c in choices],
                                    rel=1e-6)
        assert sample["acc"] == float(lls.index(max(lls)) == sample["doc"]["label"])

    for sample in _samples(results, "toy_gen"):
        context = sample["arguments"][0][0]
        ids = pipeline.tokenizer.encode(context)
        # AR generates the tokens asked for; MDLM fills its window, as unmask sample --prompt does.
        length = 1 + len(ids) + 6 if kind == "ar" else None
        samples = unmask.generate_text(pipeline, sampling, num_samples=1, prompt=context, length=length,
                                       seed=content_seed(0, "generate", ids), stop_at_eos=True)
        new = samples.tokens[0, 1 + len(ids):7 + len(ids)].tolist()
        expected = continuation_text(pipeline, new, ["\n", "."])
        assert sample["resps"][0][0] == expected
        assert "\n" not in expected and "." not in expected

    for sample in _samples(results, "toy_pages"):
        page = sample["doc"]["page"]
        data = tmp_path / f"page{sample['doc_id']}.jsonl"
        data.write_text(json.dumps({"text": page}) + "\n")
        report = evaluate_checkpoint(runs[kind], EvalConfig(data=str(data), seed=content_seed(0, "rolling", page)))
        total = report.likelihood.nelbo_per_token * report.likelihood.tokens
        assert float(sample["resps"][0][0]) == pytest.approx(-total, rel=1e-9)
    assert results["results"]["toy_pages"]["word_perplexity,none"] > 1


def _requests(pipeline):
    loglikelihood = [SimpleNamespace(args=(text.rsplit(" ", 1)[0], " " + text.rsplit(" ", 1)[1])) for text in HELD_OUT]
    loglikelihood.append(SimpleNamespace(args=("", "a")))
    rolling = [SimpleNamespace(args=(page,)) for page in PAGES]
    generate = [SimpleNamespace(args=(f"q: {q['question']}\na:", {"until": ["\n"], "max_gen_toks": 5}))
                for q in QUESTIONS]
    generate.append(SimpleNamespace(args=("x" * 40, {"until": ["e"], "max_gen_toks": 40, "do_sample": True})))
    return loglikelihood, rolling, generate


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mdlm", "ar", "bd3lm"])  # sedd, d3pm: tests/test_conditional.py
def test_every_request_type_answers_the_same_at_batch_size_1_and_16(tmp_path, objective):
    """Windows past the model's length (MDLM), block by block (BD3-LM), left to right (AR); SEDD and D3PM
    sample as MDLM does, and their loglikelihood is checked at any batch size beside the others'."""
    run, _ = untrained_run(tmp_path, objective, scrambled=True, block_size=8)
    pipeline = unmask.load(run)
    loglikelihood, rolling, generate = _requests(pipeline)
    answers = {}
    for batch_size in (1, 16):
        model = HarnessModel(pipeline, num_t=5, batch_size=batch_size, steps=6, progress=False)
        answers[batch_size] = (model.loglikelihood(loglikelihood), model.loglikelihood_rolling(rolling),
                               model.generate_until(generate))
    (ll_1, rolling_1, text_1), (ll_16, rolling_16, text_16) = answers[1], answers[16]
    assert [ll for ll, _ in ll_1] == pytest.approx([ll for ll, _ in ll_16], rel=1e-6, abs=1e-6)
    assert [greedy for _, greedy in ll_1] == [greedy for _, greedy in ll_16]
    assert rolling_1 == pytest.approx(rolling_16, rel=1e-6)
    assert text_1 == text_16
    assert all("\n" not in text for text in text_1[:2]) and "e" not in text_1[-1]


def test_generation_options_and_model_arguments_are_checked(tmp_path):
    run, _ = untrained_run(tmp_path, "ar")
    with pytest.raises(unmask.errors.UserError, match="unknown model argument 'stepz'"):
        HarnessModel(run, stepz=3)
    with pytest.raises(unmask.errors.UserError, match="first_hitting"):
        HarnessModel(run, sampler="first_hitting")
    model = HarnessModel(run, progress=False, temperature=0.5)
    assert model.own_temperature and model.sampling.draw.temperature == 0.5


@pytest.mark.slow
def test_unmask_lm_eval_command(trained, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    runs, tasks = trained
    out = tmp_path / "results"
    code = main(["lm-eval", str(runs["mdlm"]), "--tasks", "toy_cloze,toy_gen", "--include-path", str(tasks),
                 "--limit", "2", "--num-t", "2", "--steps", "4", "--bootstrap-iters", "0", "--output-path", str(out),
                 "--log-samples", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "toy_cloze" in printed and "exact_match" in printed and f"wrote {out / 'results.json'}" in printed
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["results"]) == {"toy_cloze", "toy_gen"} and "samples" not in saved
    assert len((out / "samples_toy_cloze.jsonl").read_text().splitlines()) == 2
    assert main(["lm-eval", str(runs["mdlm"]), "--tasks", "no_such_task", "--include-path", str(tasks)]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task 'no_such_task'" in err and len(err.strip().splitlines()) == 1


def test_lm_eval_is_optional(tmp_path, monkeypatch, capsys):
    """`import unmask` and the CLI's parser never import lm_eval; without it, `unmask lm-eval` says what to install."""
    code = "import sys, unmask.cli.parser, unmask.evaluate.harness; print('lm_eval' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
    run, _ = untrained_run(tmp_path, "mdlm")
    from unmask import errors

    real = errors.importlib.util.find_spec
    monkeypatch.setattr(errors.importlib.util, "find_spec", lambda name: None if name == "lm_eval" else real(name))
    from unmask.evaluate import harness

    harness.lm_class.cache_clear()
    try:
        assert main(["lm-eval", str(run), "--tasks", "toy_cloze"]) == 2
    finally:
        harness.lm_class.cache_clear()
    err = capsys.readouterr().err
    assert 'needs the optional package lm_eval: pip install "unmask[eval]"' in err
