"""Conditional bounds: -log p(continuation | context) exact on the toy distribution for every kind's estimator,
greedy decoding checked against a plain loop, the AR chain rule, one answer per pair at any batch size, and
``unmask eval --prompt-file``."""

import json
import math

import pytest
import torch
from runs import untrained_run
from toy import ExactScoreDenoiser, ToyDistribution

import unmask
from unmask.bounds.conditional import RowNoise
from unmask.cli import main
from unmask.config import ObjectiveConfig
from unmask.errors import UserError
from unmask.evaluate.conditional import conditional_nelbo, encode_pair, score_continuations
from unmask.kinds import get_kind
from unmask.kinds.base import ModelKind

# (scored positions, free positions) of a row of 4; the other positions are clean context.
TEMPLATES = [
    ([1, 2], []),  # infilling: context on both sides
    ([2, 3], []),  # a continuation after a prompt
    ([1], [2, 3]),  # one token, the rest of the window unknown
    ([0, 3], []),  # context in the middle
    ([1, 2, 3], []),  # everything after the first token
]


def _row(toy: ToyDistribution, x: torch.Tensor, scored_at: list[int], free_at: list[int]):
    scored = torch.zeros(toy.length, dtype=torch.bool)
    scored[scored_at] = True
    x0 = x.clone()
    x0[free_at] = toy.mask_id
    return x0, scored


def _neg_log_conditional(toy: ToyDistribution, x0: torch.Tensor, scored: torch.Tensor, given: torch.Tensor) -> float:
    """-log p(x0 at scored | x0 at given), every other position marginalised, by enumeration."""
    template = torch.where(given, x0, toy.mask_id)
    table = toy.conditional(template)
    fits = (toy.sequences[:, scored] == x0[scored]).all(-1)
    return -math.log(float((table * fits).sum()))


def _truth(toy, x0, scored):
    return _neg_log_conditional(toy, x0, scored, ~scored & (x0 != toy.mask_id))


def _block_truth(toy, x0, scored, block_size):
    """Block diffusion's -log p: sum over blocks of the block's scored tokens given the clean blocks before it
    and the context inside it (later blocks unseen)."""
    block = torch.arange(toy.length) // block_size
    known = x0 != toy.mask_id
    total = 0.0
    for b in range(toy.length // block_size):
        here = scored & (block == b)
        if here.any():
            given = known & ((block < b) | ((block == b) & ~scored))
            total += _neg_log_conditional(toy, x0, here, given)
    return total


def _estimate(kind, denoiser, x0, scored, objective, mask_id, samples, seed=0):
    noise = RowNoise.draw(samples, len(x0), torch.Generator().manual_seed(seed))
    values = kind.conditional_losses(denoiser, x0.expand(samples, -1), scored.expand(samples, -1), objective,
                                     mask_id, noise).double()
    return float(values.mean()), float(values.std() / samples**0.5)


def test_the_conditional_bound_is_exact_on_the_toy(toy):
    """E[bound] = -log p(continuation | context) for every template (infilling, free positions), for the count
    estimator (a denoiser that does not read t) and the time estimator, within Monte Carlo error."""
    counts = toy.denoiser()
    counts.reads_time = False
    times = toy.denoiser()
    objective = ObjectiveConfig()
    sequences = toy.draw(2, torch.Generator().manual_seed(4))
    for x in sequences:
        for scored_at, free_at in TEMPLATES:
            x0, scored = _row(toy, x, scored_at, free_at)
            truth = _truth(toy, x0, scored)
            mean, se = _estimate(get_kind("mdlm"), counts, x0, scored, objective, toy.mask_id, 2000)
            assert abs(mean - truth) < 4 * se + 1e-5, (scored_at, free_at, mean, truth, se)
            mean, se = _estimate(get_kind("mdlm"), times, x0, scored, objective, toy.mask_id, 2000)
            # The time floor (masking rate >= 1e-3) leaves out a sliver below the bound.
            assert abs(mean - truth) < 4 * se + 5e-3, (scored_at, free_at, mean, truth, se)


def test_every_kind_s_conditional_bound_is_exact_with_the_exact_model(toy):
    """SEDD (its score entropy with the exact score), MDLM and D3PM at T = 1000 (discrete), and block
    diffusion (block-causal: each block given the blocks before it) on the toy."""
    x0, scored = _row(toy, toy.draw(1, torch.Generator().manual_seed(7))[0], [1, 2, 3], [])
    truth = _truth(toy, x0, scored)
    cases = [
        ("sedd", ExactScoreDenoiser(toy), ObjectiveConfig(name="sedd"), truth, 5e-3),
        ("mdlm", toy.denoiser(), ObjectiveConfig(discrete_steps=1000), truth, 1e-2),
        ("d3pm", toy.denoiser(), ObjectiveConfig(name="d3pm"), truth, 1e-2),
        ("bd3lm", toy.denoiser(), ObjectiveConfig(name="bd3lm", block_size=2), _block_truth(toy, x0, scored, 2), 1e-5),
    ]
    for name, denoiser, objective, expected, slack in cases:
        mean, se = _estimate(get_kind(name), denoiser, x0, scored, objective, toy.mask_id, 2000)
        assert abs(mean - expected) < 4 * se + slack, (name, mean, expected, se)
    # Infilling under block diffusion: the context after the continuation is unseen by the blocks before it.
    x0, scored = _row(toy, x0, [1, 2], [])
    mean, se = _estimate(get_kind("bd3lm"), toy.denoiser(), x0, scored, ObjectiveConfig(name="bd3lm", block_size=2),
                         toy.mask_id, 2000)
    assert abs(mean - _block_truth(toy, x0, scored, 2)) < 4 * se + 1e-5


def test_one_token_is_exact_in_one_sample(toy):
    denoiser = toy.denoiser()
    denoiser.reads_time = False
    x0, scored = _row(toy, toy.draw(1, torch.Generator().manual_seed(2))[0], [2], [3])
    blocks = ObjectiveConfig(name="bd3lm", block_size=2)
    for kind, objective in ((get_kind("mdlm"), ObjectiveConfig()), (get_kind("bd3lm"), blocks)):
        assert kind.conditional_samples(denoiser, objective, 1, 64) == 1
        noise = RowNoise.draw(1, toy.length, torch.Generator().manual_seed(0))
        value = float(kind.conditional_losses(denoiser, x0[None], scored[None], objective, toy.mask_id, noise))
        assert value == pytest.approx(_truth(toy, x0, scored), abs=1e-5)
    # A denoiser that reads t needs every sample; so do longer continuations.
    assert get_kind("mdlm").conditional_samples(toy.denoiser(), ObjectiveConfig(), 1, 64) == 64
    assert get_kind("mdlm").conditional_samples(denoiser, ObjectiveConfig(), 2, 64) == 64


def _greedy_reference(denoiser, x0, scored, mask_id, block_size):
    """Greedy decoding, written out: fill the most probable token at the most confident masked position of
    the first unfinished block (which sees the blocks before it, not those after), one position per call."""
    x = torch.where(scored, mask_id, x0)
    block = torch.arange(len(x0)) // block_size
    while (x == mask_id).logical_and(scored).any():
        left = (x == mask_id) & scored
        first = int(block[left].min())
        seen = torch.where(block > first, mask_id, x)
        probs = torch.log_softmax(denoiser(seen[None], torch.zeros(1))[0].float(), -1).exp()
        probs[:, mask_id] = 0
        confidence, token = probs.max(-1)
        confidence[~(left & (block == first))] = -1
        position = int(confidence.argmax())
        x[position] = token[position]
    return bool((x[scored] == x0[scored]).all())


def test_greedy_matches_is_greedy_decoding(toy):
    denoiser = toy.denoiser()
    objective = ObjectiveConfig()
    for scored_at, free_at in TEMPLATES:
        rows = [_row(toy, x, scored_at, free_at) for x in toy.sequences]
        x0, scored = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
        for kind, block_size in ((get_kind("mdlm"), 4), (get_kind("bd3lm"), 2)):
            objective = ObjectiveConfig(name=kind.name, block_size=block_size)
            got = kind.greedy_matches(denoiser, x0, scored, objective, toy.mask_id)
            expected = [_greedy_reference(denoiser, a, b, toy.mask_id, block_size) for a, b in zip(x0, scored)]
            assert got.tolist() == expected, (kind.name, scored_at)
            assert 0 < sum(expected) < len(expected)  # both answers occur


def test_the_ar_conditional_is_the_chain_rule_and_greedy_is_argmax(tmp_path):
    run, _ = untrained_run(tmp_path, "ar", scrambled=True)
    pipeline = unmask.load(run)
    model, mask_id, kind, objective = pipeline.model, pipeline.mask_id, pipeline.kind, pipeline.config.objective
    x0 = torch.randint(0, 20, (3, 32), generator=torch.Generator().manual_seed(0))
    scored = torch.zeros_like(x0, dtype=torch.bool)
    scored[:, 10:15] = True

    def log_probs(x):
        logits = model(x, torch.zeros(len(x))).float()
        logits[..., mask_id] = -math.inf  # MASK is never predicted
        return torch.log_softmax(logits, -1)

    with torch.no_grad():
        expected = -log_probs(x0)[:, 9:14].gather(-1, x0[:, 10:15, None]).squeeze(-1).sum(-1)
        got = kind.conditional_losses(model, x0, scored, objective, mask_id, None)
        assert torch.allclose(got, expected, atol=1e-4)
        greedy = x0.clone()
        for position in range(10, 15):  # decode left to right after the context
            greedy[:, position] = log_probs(greedy)[:, position - 1].argmax(-1)
        x0[0] = greedy[0]  # the first row's continuation is its greedy decoding
        matches = kind.greedy_matches(model, x0, scored, objective, mask_id)
    assert matches.tolist() == [bool((greedy[i, 10:15] == x0[i, 10:15]).all()) for i in range(3)]
    assert matches.tolist()[0]


@pytest.mark.parametrize("objective", ["mdlm", "ar", "bd3lm", "sedd", "d3pm"])
def test_a_pair_gets_the_same_figure_alone_and_in_any_batch(tmp_path, objective):
    run, _ = untrained_run(tmp_path, objective, scrambled=True, block_size=8)
    pipeline = unmask.load(run)
    tokenizer = pipeline.tokenizer
    texts = [("to be, or not", " to be"), ("", "a"), ("the rest is", " silence"),
             ("x" * 60, " beyond the window"), ("a", "b"), ("once more unto the", " breach")]
    pairs = [encode_pair(tokenizer, context, continuation) for context, continuation in texts]
    one = score_continuations(pipeline, pairs, num_t=6, batch_size=1, greedy=True)
    many = score_continuations(pipeline, pairs, num_t=6, batch_size=16, greedy=True)
    reordered = score_continuations(pipeline, pairs[::-1], num_t=6, batch_size=5, greedy=True)[::-1]
    for a, b, c in zip(one, many, reordered):
        assert a.nelbo == pytest.approx(b.nelbo, rel=1e-6, abs=1e-6) == c.nelbo
        assert a.greedy == b.greedy == c.greedy
    assert [s.samples for s in one] == [1 if objective == "ar" or n == 1 and objective in ("mdlm", "bd3lm") else 6
                                        for n in (len(cont) for _, cont in pairs)]
    assert conditional_nelbo(pipeline, *texts[0], num_t=6) == pytest.approx(one[0].nelbo, rel=1e-6)
    assert all(s.nelbo > 0 for s in one)


def test_a_continuation_that_does_not_fit_and_a_kind_without_a_bound_are_refused(tmp_path):
    run, _ = untrained_run(tmp_path, "mdlm")
    pipeline = unmask.load(run)
    with pytest.raises(UserError, match="a continuation of 40 tokens does not fit in the model's length 32"):
        conditional_nelbo(pipeline, "a", "b" * 40)
    with pytest.raises(UserError, match="has no conditional bound"):
        ModelKind().conditional_losses(pipeline.model, torch.zeros(1, 4, dtype=torch.long),
                                       torch.ones(1, 4, dtype=torch.bool), ObjectiveConfig(), 0, None)


def test_eval_prompt_file_bounds_each_continuation(tmp_path, capsys):
    run, _ = untrained_run(tmp_path, "mdlm", scrambled=True)
    pairs = [{"context": "to be, or not", "continuation": " to be"}, {"context": "", "continuation": "hamlet"},
             {"context": "the rest is", "continuation": " silence"}]
    prompts = tmp_path / "pairs.jsonl"
    prompts.write_text("\n".join(json.dumps(pair) for pair in pairs) + "\n")
    out = tmp_path / "report.json"
    assert main(["eval", str(run), "--prompt-file", str(prompts), "--num-t", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 continuations given their contexts" in printed and "NELBO / continuation token" in printed
    report = json.loads(out.read_text())
    pipeline = unmask.load(run)
    expected = [conditional_nelbo(pipeline, p["context"], p["continuation"], num_t=3) for p in pairs]
    assert [item["nelbo"] for item in report["continuations"]] == pytest.approx(expected, rel=1e-6)
    tokens = [len(encode_pair(pipeline.tokenizer, p["context"], p["continuation"])[1]) for p in pairs]
    assert report["tokens"] == sum(tokens)
    assert report["nelbo_per_token"] == pytest.approx(sum(expected) / sum(tokens), rel=1e-6)

    prompts.write_text('{"context": "a"}\n')
    assert main(["eval", str(run), "--prompt-file", str(prompts)]) == 2
    assert 'line 1: needs the text fields "context" and "continuation"' in capsys.readouterr().err
    assert main(["eval", str(run), "--prompt-file", str(prompts), "--data", str(prompts)]) == 2
    err = capsys.readouterr().err
    assert "prompt_file scores its own pairs: drop data" in err and len(err.strip().splitlines()) == 1
