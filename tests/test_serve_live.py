"""The server over loopback (uvicorn on a free port): streams that arrive while generating, disconnects that
free their place, a burst of concurrent clients, the openai client (completions and chat), Ctrl-C, and the page in a
real browser (text and chat)."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from runs import untrained_run  # noqa: E402
from served import alone, sse_events  # noqa: E402

from unmask.data.chat import prompt_ids  # noqa: E402
from unmask.generation import generate_text  # noqa: E402
from unmask.pipeline import load  # noqa: E402
from unmask.sampling import SamplerConfig  # noqa: E402
from unmask.serve import Limits, create_app, serving  # noqa: E402

LONG = {"prompt": "it is", "steps": 1000, "sampler": "ancestral"}  # a network call at each of 1000 steps
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# What lets Debian's Chromium run headless in a container without a network (see docs/serving.md).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return untrained_run(tmp_path_factory.mktemp("live"), "mdlm", scrambled=True)[0]


@pytest.fixture(scope="module")
def pipeline(run):
    return load(run, device="cpu")


@pytest.fixture(scope="module")
def url(pipeline):
    limits = Limits(max_num_samples=8, max_steps=1000)
    with serving(create_app(pipeline, model="tiny", max_batch=8, limits=limits)) as url:
        yield url


def _health(url: str) -> dict:
    return httpx.get(f"{url}/health").json()


def _wait_for(url: str, condition) -> dict:
    """The health of the server once ``condition`` holds (polled; a broken server fails the test by timing out)."""
    for _ in range(2000):
        health = _health(url)
        if condition(health):
            return health
        time.sleep(0.01)
    raise AssertionError(f"the server never got there: {health}")


@pytest.mark.slow
def test_stream_events_arrive_while_generating(url):
    body = {**LONG, "seed": 1}
    with httpx.stream("POST", f"{url}/v1/generate", json={**body, "stream": True}, timeout=60) as response:
        lines = response.iter_lines()
        first = sse_events(line for _, line in zip(range(3), lines))  # event, data, blank line
        assert first[0][0] == "step" and first[0][1]["step"] == 0
        assert _health(url)["running"] == 1  # the event came while the request was still generating
        events = first + sse_events(lines)
    steps = [data["step"] for name, data in events if name == "step"]
    assert steps == list(range(1001)) and events[-1][0] == "done"
    answer = httpx.post(f"{url}/v1/generate", json=body, timeout=60).json()
    done = events[-1][1]
    assert done["samples"] == answer["samples"] and done["num_calls"] == answer["num_calls"] == 1000


@pytest.mark.slow
def test_a_client_that_goes_away_frees_its_place_at_once(url):
    before = _health(url)
    with httpx.stream("POST", f"{url}/v1/generate", json={**LONG, "seed": 2, "stream": True}) as response:
        lines = response.iter_lines()  # kept: dropping the iterator would close the connection
        next(lines)
        assert _health(url)["running"] == 1
    after = _wait_for(url, lambda h: h["running"] == 0)
    assert after["dropped"] == before["dropped"] + 1 and after["served"] == before["served"]

    # Not streamed: the client gives up waiting.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/generate", json={**LONG, "seed": 3}, timeout=0.5)
    after = _wait_for(url, lambda h: h["running"] == 0)
    assert after["dropped"] == before["dropped"] + 2 and after["served"] == before["served"]

    # Waiting in the queue behind a request that fills the batch: it leaves the queue at once.
    full = threading.Thread(target=httpx.post, args=(f"{url}/v1/generate",),
                            kwargs={"json": {**LONG, "seed": 4, "num_samples": 8}, "timeout": 60})
    full.start()
    _wait_for(url, lambda h: h["running"] == 1)
    with httpx.stream("POST", f"{url}/v1/generate", json={**LONG, "seed": 5, "stream": True}) as response:
        _wait_for(url, lambda h: h["waiting"] == 1)
        response.close()
    after = _wait_for(url, lambda h: h["waiting"] == 0)
    assert after["running"] == 1 and after["dropped"] == before["dropped"] + 3
    full.join()
    assert _health(url)["served"] == before["served"] + 1


@pytest.mark.slow
def test_a_burst_of_concurrent_clients_gets_every_answer_right(url):
    """48 requests from 12 clients at once, of different lengths, steps, samplers and sizes: each answer is the
    one the same request gets alone, none is lost, none goes to another client."""
    prompts = ["it is", "a single", "truth", "", "in want of", "the", "however little", "known"]
    samplers = ["cached", "ancestral", "first_hitting"]
    bodies = {(client, i): {"prompt": prompts[(client + i) % len(prompts)], "length": (16, 24, 32)[(client + i) % 3],
                            "steps": (8, 16, 24)[client % 3], "sampler": samplers[(client * 4 + i) % 3],
                            "num_samples": 1 + (client + i) % 2, "seed": 100 * client + i}
              for client in range(12) for i in range(4)}
    with httpx.Client(base_url=url, timeout=120) as http:  # one at a time (generate_text's own: test_serve.py)
        expected = {key: http.post("/v1/generate", json=body).json() for key, body in bodies.items()}
    before = _health(url)
    answers, errors = {}, []

    def client_session(client: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=120) as http:
                for i in range(4):
                    body = bodies[client, i]
                    if i % 2:  # every other request streamed
                        with http.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
                            answers[client, i] = sse_events(response.iter_lines())[-1][1]
                    else:
                        answers[client, i] = http.post("/v1/generate", json=body).json()
        except Exception as err:  # reported below, with the client
            errors.append((client, err))

    threads = [threading.Thread(target=client_session, args=(client,)) for client in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(answers) == 48
    for key, answer in answers.items():
        assert answer["samples"] == expected[key]["samples"], key
        assert answer["seed"] == bodies[key]["seed"] and answer["num_calls"] == expected[key]["num_calls"]
    after = _health(url)
    assert after["served"] - before["served"] == 48 and after["failed"] == before["failed"]
    shared = after["denoiser_calls"] - before["denoiser_calls"]
    assert shared < sum(answer["num_calls"] for answer in answers.values())  # requests shared denoiser calls


def test_the_openai_client_works_unchanged(url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert [model.id for model in client.models.list()] == ["tiny"]
    completion = client.completions.create(model="tiny", prompt="it is a", max_tokens=12, n=2, seed=9)
    assert len(completion.choices) == 2 and completion.usage.completion_tokens == 24
    chunks = client.completions.create(model="tiny", prompt="it is a", max_tokens=12, n=2, seed=9, stream=True)
    streamed = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == [choice.text for choice in completion.choices]
    with pytest.raises(openai.BadRequestError, match="stop is not supported"):
        client.completions.create(model="tiny", prompt="it", stop=["."])


@pytest.mark.slow
def test_ctrl_c_drains_the_requests_in_flight_then_stops(run):
    # One intra-op thread: on 2 shared cores, two threads beside the event loop's can make each step 50x slower.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "unmask", "serve", str(run), "--port", "0", "--device", "cpu"],
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stderr.readline()
        assert "unmask serve:" in line, line
        url = line.split(" at ")[1].split()[0].rstrip("/")
        _wait_for(url, lambda h: h["status"] == "ok")
        with httpx.stream("POST", f"{url}/v1/generate", json={**LONG, "seed": 6, "stream": True},
                          timeout=120) as response:
            lines = response.iter_lines()
            next(lines)
            server.send_signal(signal.SIGINT)
            events = sse_events(lines)
        assert events[-1][0] == "done" and events[-1][1]["num_calls"] == 1000  # finished, not cut off
        assert server.wait(timeout=60) == 0
        assert "Waiting for connections to close" in server.stderr.read()  # the stream was in flight: drained
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")
    finally:
        if server.poll() is None:
            server.kill()
        server.stderr.close()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y chromium")
def test_the_page_shows_the_text_unmasking_in_a_real_browser(pipeline, tmp_path):
    """UNMASK_SCREENSHOT=PATH keeps the picture; UNMASK_SCREENSHOT_RUN=RUN serves that run instead of a random model
    (docs/serving.md says how docs/serve-screenshot.png was made)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="no Playwright: pip install playwright")
    screenshot = Path(os.environ.get("UNMASK_SCREENSHOT", tmp_path / "serve.png"))
    shown = os.environ.get("UNMASK_SCREENSHOT_RUN")
    pipeline = load(shown, device="cpu") if shown else pipeline
    body = {"prompt": "it is a truth", "steps": 48, "sampler": "ancestral", "temperature": 1.0, "seed": 7}
    expected = alone(pipeline, body).texts[0]
    name = Path(shown).name if shown else "tiny-random"
    with serving(create_app(pipeline, model=name)) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1000, "height": 620})
        try:
            page = browser.new_page()
            page.goto(url)
            page.fill("#prompt", body["prompt"])
            page.fill("#steps", str(body["steps"]))
            page.select_option("#sampler", body["sampler"])
            page.fill("#seed", str(body["seed"]))
            page.click("#go")
            # A state during generation: some positions still masked, some revealed.
            page.wait_for_function("() => { const out = document.getElementById('out');"
                                   " return Number(out.dataset.step) >= 1 && Number(out.dataset.masked) > 0; }",
                                   polling="raf")
            assert page.locator("#out .mask").count() > 0
            page.wait_for_function("() => document.body.dataset.state === 'done'")
            assert page.text_content("#final") == expected
            assert page.locator("#out .mask").count() == 0
            assert "denoiser calls" in page.text_content("#status")
            for step in range(16, body["steps"]):  # back to a step in the middle that revealed tokens, for the picture
                page.fill("#replay", str(step))
                if page.locator("#out .new").count() > 0:
                    break
            assert page.locator("#out .mask").count() > 0 and page.locator("#out .new").count() > 0
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 0


@pytest.fixture(scope="module")
def chat_pipeline(tmp_path_factory):
    """A tiny pretrained causal LM adapted as an MDLM (random weights, a ChatML template), untrained."""
    pytest.importorskip("transformers")
    from tiny_lm import tiny_causal_lm

    from unmask.adapt_config import AdaptConfig
    from unmask.config import Config
    from unmask.data import get_tokenizer
    from unmask.interop.pretrained import adapt_pretrained
    from unmask.pipeline import Pipeline

    folder = tiny_causal_lm(tmp_path_factory.mktemp("chat-lm"))
    config = Config()
    config.adapt, config.data.tokenizer, config.data.length = AdaptConfig(init=str(folder)), str(folder), 96
    tokenizer = get_tokenizer(str(folder))
    model = adapt_pretrained(config.adapt, tokenizer, config.data.length).eval()
    return Pipeline(model=model, tokenizer=tokenizer, config=config, checkpoint=folder)


@pytest.fixture(scope="module")
def chat_url(chat_pipeline):
    with serving(create_app(chat_pipeline, model="tiny-chat", max_batch=8)) as url:
        yield url


QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


def test_the_openai_client_chats_streamed_and_not(chat_url, chat_pipeline):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{chat_url}/v1", api_key="unused", max_retries=0)
    expected = generate_text(chat_pipeline, SamplerConfig(steps=8), chat=QUESTION, max_tokens=10, num_samples=2,
                             seed=4)
    reply = client.chat.completions.create(model="tiny-chat", messages=QUESTION, max_tokens=10, n=2, seed=4,
                                           extra_body={"steps": 8})
    assert reply.object == "chat.completion" and [c.index for c in reply.choices] == [0, 1]
    assert [c.message.content for c in reply.choices] == expected.texts
    assert all(c.message.role == "assistant" and c.finish_reason in ("stop", "length") for c in reply.choices)
    prompt = len(prompt_ids(chat_pipeline.tokenizer, QUESTION))
    eos = chat_pipeline.tokenizer.eos_id
    for choice, row in zip(reply.choices, expected.tokens.tolist()):
        assert choice.finish_reason == ("stop" if eos in row[prompt:] else "length")
    assert reply.usage.prompt_tokens == prompt and 2 <= reply.usage.completion_tokens <= 20

    stream = client.chat.completions.create(model="tiny-chat", messages=QUESTION, max_completion_tokens=10, n=2,
                                            seed=4, stream=True, stream_options={"include_usage": True},
                                            extra_body={"steps": 8})
    contents, roles, reasons, usage = ["", ""], [None, None], [None, None], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            if choice.delta.role is not None:
                assert contents[choice.index] == "" and reasons[choice.index] is None  # the role comes first
                roles[choice.index] = choice.delta.role
            contents[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
        usage = chunk.usage or usage
    assert roles == ["assistant", "assistant"] and contents == expected.texts
    assert reasons == [c.finish_reason for c in reply.choices] and usage == reply.usage
    with pytest.raises(openai.BadRequestError, match="stop is not supported"):
        client.chat.completions.create(model="tiny-chat", messages=QUESTION, stop=["."])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny-chat", messages=[{"role": "user"}])


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y chromium")
def test_the_page_shows_a_chat_answer_unmasking_in_a_real_browser(chat_pipeline, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="no Playwright: pip install playwright")
    question, tokens, steps, seed = "What is the capital of France?", 24, 32, 11
    expected = generate_text(chat_pipeline, SamplerConfig(steps=steps, sampler="ancestral"), chat=question,
                             max_tokens=tokens, num_samples=1, seed=seed).texts[0]
    with serving(create_app(chat_pipeline, model="tiny-chat")) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.select_option("#mode", "chat")
            assert page.text_content("#length-label") == "answer (tokens)"
            page.fill("#prompt", question)
            page.fill("#length", str(tokens))
            page.fill("#steps", str(steps))
            page.select_option("#sampler", "ancestral")
            page.fill("#seed", str(seed))
            page.click("#go")
            page.wait_for_function("() => { const out = document.getElementById('out');"
                                   " return Number(out.dataset.step) >= 1 && Number(out.dataset.masked) > 0; }",
                                   polling="raf")
            # Only the answer is shown, unmasking: the rendered conversation it follows is not.
            assert page.locator("#out span").count() == tokens and page.locator("#out .fixed").count() == 0
            page.wait_for_function("() => document.body.dataset.state === 'done'")
            assert page.text_content("#final") == expected
            assert page.locator("#out .mask").count() == 0
        finally:
            browser.close()
