"""Supervised fine-tuning on conversations (unmask.data.chat): the prompt is seen but never masked nor scored, the
answer and its EOS padding are, and the loss is the hand-computed one."""

import json

import pytest
import torch

pytest.importorskip("transformers")
from tiny_lm import chats, tiny_causal_lm, write_chats  # noqa: E402

from unmask.adapt_config import AdaptConfig  # noqa: E402
from unmask.bounds.masking import min_time, sample_times  # noqa: E402
from unmask.config import ObjectiveConfig  # noqa: E402
from unmask.data import ChatExamples, DataError, get_tokenizer, is_chat_source  # noqa: E402
from unmask.data.batching import stack_items  # noqa: E402
from unmask.data.chat import answer_turns, prompt_ids, render_chat  # noqa: E402
from unmask.interop.pretrained import adapt_pretrained  # noqa: E402
from unmask.kinds import sequence_losses  # noqa: E402
from unmask.schedules import get_schedule  # noqa: E402

LENGTH = 160
TOY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"},
       {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Hello!"},
       {"role": "assistant", "content": "How can I help you today?"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def tokenizer(folder):
    return get_tokenizer(str(folder))


@pytest.fixture(scope="module")
def model(folder, tokenizer):
    return adapt_pretrained(AdaptConfig(init=str(folder)), tokenizer, LENGTH).eval()


def test_each_assistant_turn_is_an_example_after_the_conversation_before_it(tokenizer):
    turns = answer_turns(tokenizer, TOY)
    assert len(turns) == 2
    for (prompt, answer), end in zip(turns, (2, 4)):
        assert prompt == prompt_ids(tokenizer, TOY[:end])
        assert answer[-1] == tokenizer.eos_id and tokenizer.eos_id not in answer[:-1]
        rendered = render_chat(tokenizer, TOY[: end + 1], add_generation_prompt=False)
        decoded = tokenizer.decode(prompt + answer, skip_special=False)
        assert "".join(decoded.split()) == "".join(rendered.split())  # the whole turn, nothing else
    assert prompt_ids(tokenizer, TOY[:2])[0] == tokenizer.bos_id  # <|im_start|> opens the conversation


def test_the_prompt_is_seen_but_never_counted_and_eos_pads_the_answer(tmp_path, tokenizer):
    source = write_chats(tmp_path / "chats.jsonl", [{"messages": TOY}] * 3)
    assert is_chat_source(str(source)) and not is_chat_source(str(source), "text")
    examples = ChatExamples(str(source), tokenizer, split="all", length=LENGTH)
    assert len(examples) == 6
    prompt, answer = answer_turns(tokenizer, TOY)[0]
    item = examples[0]
    ids, counted = item["input_ids"].tolist(), item["loss_mask"].tolist()
    assert ids[: len(prompt) + len(answer)] == prompt + answer
    assert set(ids[len(prompt) + len(answer):]) == {tokenizer.eos_id}  # LLaDA: EOS after the answer, scored
    assert counted == [False] * len(prompt) + [True] * (LENGTH - len(prompt))
    assert item["attention_mask"].all()
    assert examples.num_tokens == sum(int(examples[i]["loss_mask"].sum()) for i in range(len(examples)))


class Spy(torch.nn.Module):
    """The adapted model, recording what each call gets."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []
        self.supports_positions = self.supports_attention_mask = self.supports_block_diffusion = True

    def forward(self, x_t, t=None, **kwargs):
        self.calls.append({"x_t": x_t.clone(), **kwargs})
        return self.model(x_t, t, **kwargs)


@pytest.mark.parametrize("objective", ["mdlm", "bd3lm"])
def test_prompt_tokens_are_never_masked_or_scored(tmp_path, tokenizer, model, objective):
    source = write_chats(tmp_path / "chats.jsonl", chats(6))
    examples = ChatExamples(str(source), tokenizer, split="all", length=LENGTH)
    batch = stack_items([examples[i] for i in range(len(examples))])
    prompt = ~batch["loss_mask"]
    spy = Spy(model)
    config = ObjectiveConfig(name=objective, block_size=4)
    with torch.no_grad():
        for seed in range(20):
            sequence_losses(spy, batch, config, tokenizer.mask_id, generator=torch.Generator().manual_seed(seed))
    assert prompt.any() and batch["loss_mask"].any()
    masked_somewhere = torch.zeros_like(prompt)
    for call in spy.calls:
        x_t, where = call["x_t"][:, : prompt.shape[1]], call["where"]
        assert torch.equal(x_t[prompt], batch["input_ids"][prompt])  # the prompt stays clean
        assert not where[prompt].any()  # and is never scored
        assert call.get("attention_mask") is None  # every token is seen: the prompt included
        masked_somewhere |= x_t == tokenizer.mask_id
    assert masked_somewhere[batch["loss_mask"]].float().mean() > 0.9  # answers and padding are masked


def test_the_mdlm_loss_is_the_hand_computed_one_on_a_toy_conversation(tmp_path, tokenizer, model):
    """NELBO = (1 - t_min) * w(t) * sum over masked answer positions of -log p(x0 | x_t), with w(t) = 1 / t for the
    log-linear schedule (MDLM eq. 10): recomputed here from the masked input alone, with a full forward pass."""
    source = write_chats(tmp_path / "toy.jsonl", [{"messages": TOY[:3]}])
    batch = stack_items([ChatExamples(str(source), tokenizer, split="all", length=LENGTH)[0]])
    spy = Spy(model)
    with torch.no_grad():
        loss, count = sequence_losses(spy, batch, ObjectiveConfig(), tokenizer.mask_id,
                                      generator=torch.Generator().manual_seed(3))
        x_t = spy.calls[0]["x_t"]
        masked = x_t == tokenizer.mask_id
        log_probs = torch.log_softmax(model(x_t)[0].index_fill(-1, torch.tensor([tokenizer.mask_id]), -torch.inf), -1)
        nll = -log_probs[masked[0]].gather(-1, batch["input_ids"][masked][:, None]).sum()
    # The time the bound drew: the first draw of the same generator.
    schedule = get_schedule("loglinear")
    t = sample_times(1, t_min=min_time(schedule), generator=torch.Generator().manual_seed(3))
    expected = (1 - min_time(schedule)) * schedule.loss_weight(t) * nll
    assert masked.any() and not masked[~batch["loss_mask"]].any()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert int(count) == int(batch["loss_mask"].sum())


def test_bad_chat_files_are_refused_naming_the_fix(tmp_path, tokenizer, folder):
    no_answers = write_chats(tmp_path / "questions.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}] * 3)
    with pytest.raises(DataError, match="no assistant turns"):
        ChatExamples(str(no_answers), tokenizer, split="all", length=LENGTH)
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(DataError, match="garbled.jsonl:1"):
        ChatExamples(str(garbled), tokenizer, split="all", length=LENGTH)
    with pytest.raises(DataError, match="raise data.length"):
        ChatExamples(str(write_chats(tmp_path / "c.jsonl", chats(3))), tokenizer, split="all", length=8)
    plain = tiny_causal_lm(tmp_path / "plain", chat_template=None)
    with pytest.raises(DataError, match="no chat template"):
        ChatExamples(str(write_chats(tmp_path / "d.jsonl", chats(3))), get_tokenizer(str(plain)), split="all",
                     length=LENGTH)
