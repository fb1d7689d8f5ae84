"""The HTTP server through its app (FastAPI's TestClient): each endpoint, the same texts as ``unmask sample``,
every kind of bad input, the OpenAI-compatible completions, the batcher on its own, and ``unmask serve``'s CLI."""

import importlib.util
import json
import logging
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from runs import untrained_run  # noqa: E402
from served import alone, sampling_of, sse_events  # noqa: E402

from unmask.cli import main  # noqa: E402
from unmask.generation import prepare  # noqa: E402
from unmask.pipeline import load  # noqa: E402
from unmask.serve import Batcher, Limits, create_app, serving  # noqa: E402
from unmask.serve.app import answered_hosts  # noqa: E402
from unmask.serve.batcher import Finished, Progress  # noqa: E402
from unmask.serve.requests import GenerationRequest  # noqa: E402

LIMITS = Limits(max_num_samples=4, max_steps=128, max_length=96)
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return {objective: untrained_run(root / objective, objective, scrambled=True)[0] for objective in ("mdlm", "ar")}


@pytest.fixture(scope="module")
def pipeline(runs):
    return load(runs["mdlm"], device="cpu")


@pytest.fixture(scope="module")
def client(pipeline):
    app = create_app(pipeline, model="tiny", max_batch=8, limits=LIMITS)
    with TestClient(app, base_url="http://localhost") as client:
        yield client


def test_health_models_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["max_batch"] == 8
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/generate" in page.text and "<script" in page.text
    assert "src=" not in page.text and "href=\"http" not in page.text and "@import" not in page.text  # nothing external


BODIES = [
    {"prompt": "it is a", "steps": 16, "num_samples": 2},
    {"template": "a single [MASK:6] in possession", "steps": 8, "sampler": "ancestral"},
    {"length": 20, "sampler": "first_hitting", "temperature": 0.7},
    {"prompt": "truth", "length": 24, "steps": 12, "order": "confidence", "threshold": 0.5, "top_k": 5},
    {"prompt": "a", "steps": 10, "remasking": "cap", "eta": 0.1, "top_p": 0.9, "num_samples": 3},
]


@pytest.mark.parametrize("body", BODIES)
def test_generate_gives_the_texts_of_unmask_sample(client, pipeline, body):
    answer = client.post("/v1/generate", json={**body, "seed": 7}).json()
    expected = alone(pipeline, {**body, "seed": 7})
    assert [s["text"] for s in answer["samples"]] == expected.texts
    assert [s["tokens"] for s in answer["samples"]] == expected.tokens.tolist()
    assert answer["num_calls"] == expected.num_calls and answer["seed"] == 7
    assert answer["seconds"] >= 0 and answer["queued_seconds"] >= 0


def test_same_answer_as_the_cli(client, runs, tmp_path):
    out = tmp_path / "sample.json"
    assert main(["sample", str(runs["mdlm"]), "--prompt", "it is", "--steps", "12", "--num-samples", "2",
                 "--seed", "3", "--temperature", "0.8", "--json", str(out)]) == 0
    cli = json.loads(out.read_text())
    answer = client.post("/v1/generate", json={"prompt": "it is", "steps": 12, "num_samples": 2, "seed": 3,
                                               "temperature": 0.8}).json()
    assert answer["samples"] == cli["samples"] and answer["num_calls"] == cli["num_calls"]


def test_a_seed_is_drawn_and_reported_when_none_is_given(client, pipeline):
    answer = client.post("/v1/generate", json={"prompt": "it", "steps": 4}).json()
    expected = alone(pipeline, {"prompt": "it", "steps": 4, "seed": answer["seed"]})
    assert answer["samples"][0]["text"] == expected.texts[0]


def test_stream_sends_every_step_then_the_answer(client):
    body = {"template": "it [MASK:8] truth", "steps": 6, "sampler": "ancestral", "seed": 11}
    with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
    names = [name for name, _ in events]
    assert names == ["step"] * 7 + ["done"]
    steps = [data for name, data in events if name == "step"]
    assert [s["step"] for s in steps] == list(range(7))
    first, last = steps[0]["samples"][0], steps[-1]["samples"][0]
    assert first["text"] == "it" + "[MASK]" * 8 + " truth" and first["pieces"][3:11] == [None] * 8
    assert "[MASK]" not in last["text"] and None not in last["pieces"]
    answer = client.post("/v1/generate", json=body).json()
    done = events[-1][1]
    assert done["samples"] == answer["samples"] and done["num_calls"] == answer["num_calls"]
    assert last["tokens"] == answer["samples"][0]["tokens"]


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err.strip().removeprefix(f"unmask {argv[0]}: error: ")


def test_bad_input_gets_a_4xx_with_the_cli_wording(client, runs, capsys):
    run = str(runs["mdlm"])
    cases = [  # (request body, the CLI arguments that make the same mistake)
        ({"prompt": "word " * 40}, ["--prompt", "word " * 40]),
        ({"template": "no placeholder here"}, ["--template", "no placeholder here"]),
        ({"template": "a [MASK]", "length": 40}, ["--template", "a [MASK]", "--length", "40"]),
        ({"eta": 0.1}, ["--eta", "0.1"]),
        ({"sampler": "first_hitting", "order": "margin"}, ["--sampler", "first_hitting", "--order", "margin"]),
    ]
    for body, argv in cases:
        response = client.post("/v1/generate", json=body)
        expected = _cli_error(capsys, ["sample", run, *argv]).replace("--remask", "remasking").replace("--", "")
        assert response.status_code == 400 and response.json()["error"]["message"] == expected


@pytest.mark.parametrize(("content", "status", "fix"), [
    ('{"prompt": "it",', 400, "not valid JSON"),
    ("[1, 2]", 400, "must be a JSON object"),
    ('{"promt": "it"}', 400, "did you mean 'prompt'"),
    ('{"steps": "8"}', 400, "steps must be an integer"),
    ('{"stream": 1}', 400, "stream must be true or false"),
    ('{"steps": 0}', 400, "steps must be at least 1"),
    ('{"steps": 129}', 400, "steps is at most 128"),
    ('{"num_samples": 0}', 400, "num_samples must be at least 1"),
    ('{"num_samples": 5}', 400, "num_samples is at most 4"),
    ('{"length": 97}', 400, "over this server's limit of 96"),
    ('{"length": 1}', 400, "length counts every token"),
    ('{"temperature": -1}', 400, "temperature must be >= 0"),
    ('{"temperature": Infinity}', 400, "temperature must be a finite number"),
    ('{"seed": 18446744073709551616}', 400, "seed must be a 64-bit integer"),
    ('{"prompt": "' + "a" * (1 << 20) + '"}', 413, "over 1 MiB"),
    ('{"prompt": "it \\udcff"}', 400, "prompt is not valid UTF-8 text"),  # a lone surrogate, as JSON escapes it
    ('{"template": "\\ud800 [MASK]"}', 400, "template is not valid UTF-8 text"),
    (b'{"prompt": "\xff\xfe"}', 400, "not valid JSON"),  # bytes that are not UTF-8
    ("[" * 100_000 + "]" * 100_000, 400, "nests arrays or objects too deeply"),
    ('{"steps": ' + "9" * 5000 + "}", 400, "not valid JSON"),
    ('{"template": "a [MASK:99999999999999999999]"}', 400, "asks for more tokens than fit"),
    ('{"seed": ' + "9" * 4000 + "}", 400, "seed must be a 64-bit integer"),
])
def test_each_bad_input_is_refused_and_the_server_goes_on(client, content, status, fix):
    response = client.post("/v1/generate", content=content, headers=JSON)
    assert response.status_code == status and fix in response.json()["error"]["message"]
    assert client.post("/v1/generate", json={"steps": 2, "seed": 0}).status_code == 200


def test_unknown_endpoints_and_methods(client):
    assert client.get("/v1/nothing").status_code == 404
    response = client.get("/v1/generate")
    assert response.status_code == 405 and "POST /v1/generate" in response.json()["error"]["message"]


def test_an_ar_model_and_long_texts_are_served_as_unmask_sample_serves_them(runs, pipeline):
    ar = load(runs["ar"], device="cpu")
    with TestClient(create_app(ar, limits=LIMITS), base_url="http://localhost") as client:
        body = {"prompt": "it is", "length": 16, "num_samples": 2, "seed": 5}
        answer = client.post("/v1/generate", json=body).json()
        assert [s["text"] for s in answer["samples"]] == alone(ar, body).texts
        with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
            names = [name for name, _ in sse_events(response.iter_lines())]
        assert names == ["step"] * 11 + ["done"]  # the template, then one step per generated token
        refused = client.post("/v1/generate", json={"length": 40})
        assert refused.status_code == 400 and "exceeds the model's length 32" in refused.json()["error"]["message"]
        refused = client.post("/v1/generate", json={"order": "confidence"})
        assert "apply to diffusion models only" in refused.json()["error"]["message"]
    # beyond the model's 32: in windows
    with TestClient(create_app(pipeline, limits=LIMITS), base_url="http://localhost") as client:
        body = {"prompt": "it is", "length": 80, "steps": 8, "seed": 2}
        answer = client.post("/v1/generate", json=body).json()
        assert answer["samples"][0]["tokens"] == alone(pipeline, body).tokens[0].tolist()


def test_completions_as_openai_clients_send_them(client, pipeline):
    body = {"model": "tiny", "prompt": "it is a", "max_tokens": 10, "n": 2, "seed": 4, "temperature": 0.9}
    answer = client.post("/v1/completions", json=body).json()
    expected = alone(pipeline, {"prompt": "it is a", "length": 18, "num_samples": 2, "seed": 4, "temperature": 0.9})
    assert [c["text"] for c in answer["choices"]] == [text.removeprefix("it is a") for text in expected.texts]
    assert answer["object"] == "text_completion" and answer["choices"][1]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 8, "completion_tokens": 20, "total_tokens": 28}

    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=stream) as response:
        events = [data for _, data in sse_events(response.iter_lines())]
    assert events[-1] == "[DONE]" and events[-2]["usage"] == answer["usage"]
    for choice in answer["choices"]:
        deltas = [c["choices"][0]["text"] for c in events[:-2] if c["choices"][0]["index"] == choice["index"]]
        assert "".join(deltas) == choice["text"] and len(deltas) > 1  # settled text streamed as it grows

    neutral = {"prompt": "it", "echo": False, "frequency_penalty": 0, "logit_bias": {}, "stop": None, "user": "u"}
    assert client.post("/v1/completions", json=neutral).status_code == 200
    for bad, fix in [({"stop": ["\n"]}, "stop is not supported"), ({"prompt": ["a", "b"]}, "one string"),
                     ({"max_tokens": 0}, "max_tokens must be at least 1"), ({"n": 0}, "n must be at least 1"),
                     ({"n": 9}, "n is at most 4"), ({"max_tokens": 200}, "ask for a smaller max_tokens"),
                     ({"prompt": "it \udcff"}, "prompt is not valid UTF-8 text")]:
        # json.dumps writes ASCII: a lone surrogate goes as its escape, as any JSON library sends it
        response = client.post("/v1/completions", content=json.dumps(bad), headers=JSON)
        assert response.status_code == 400 and fix in response.json()["error"]["message"]


def test_the_batcher_shares_calls_and_gives_each_request_its_own_text(pipeline):
    """Requests of different lengths, steps and sizes at once, at most 3 rows per call: texts as if alone."""
    bodies = [{"prompt": "it", "length": 12, "steps": 6, "num_samples": 2, "seed": 1},
              {"prompt": "a", "length": 12, "steps": 9, "seed": 2},
              {"template": "x [MASK:5] y", "steps": 4, "sampler": "ancestral", "seed": 3},
              {"length": 12, "sampler": "first_hitting", "seed": 4, "num_samples": 3},
              {"prompt": "is", "length": 12, "steps": 5, "order": "entropy", "seed": 5}]
    batcher = Batcher(pipeline, max_batch=3)
    done, events = threading.Event(), {i: [] for i in range(len(bodies))}

    def listener(i):
        def hear(event):
            events[i].append(event)
            if all(isinstance(e[-1], Finished) for e in events.values() if e) and all(events.values()):
                done.set()
        return hear

    for i, body in enumerate(bodies):
        sampling = sampling_of(body)
        fixed = prepare(pipeline, sampling, num_samples=body.get("num_samples", 1), length=body.get("length"),
                        prompt=body.get("prompt"), template=body.get("template"))
        request = GenerationRequest(sampling=sampling, num_samples=body.get("num_samples", 1),
                                    length=body.get("length"), prompt=body.get("prompt"),
                                    template=body.get("template"), seed=body["seed"], fixed=fixed)
        batcher.submit(request, listener(i), stream=i == 0)
    batcher.start()
    assert done.wait(60)
    batcher.close()
    for i, body in enumerate(bodies):
        finished = events[i][-1]
        assert finished.samples.tokens.tolist() == alone(pipeline, body).tokens.tolist()
    assert all(isinstance(e, Progress) for e in events[0][:-1]) and len(events[0]) == 8  # steps 0..6, then done
    stats = batcher.stats()
    assert stats["served"] == 5 and stats["running"] == stats["waiting"] == 0
    assert stats["denoiser_calls"] < sum(events[i][-1].samples.num_calls for i in events)  # calls were shared


def test_unmask_serve_cli(runs, capsys, monkeypatch):
    for bad, fix in [(["--port", "70000"], "a port is 0 to 65535"), (["--max-batch", "0"], "must be at least 1")]:
        assert main(["serve", str(runs["mdlm"]), *bad]) == 2
        assert fix in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = _cli_error(capsys, ["serve", str(runs["mdlm"]), "--port", str(port)])
    assert f"cannot listen on 127.0.0.1:{port}" in message and "choose another --port" in message

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "fastapi"
                        else find_spec(name, *rest))
    assert 'pip install "unmask[serve]"' in _cli_error(capsys, ["serve", str(runs["mdlm"])])


@pytest.mark.parametrize(("host", "status"), [
    ("localhost:8000", 200), ("127.0.0.1", 200), ("[::1]:8000", 200), ("LOCALHOST", 200),
    ("evil.example", 403), ("evil.example:8000", 403), ("127.0.0.1.evil.example", 403), ("", 400),
])
def test_only_the_hosts_it_answers_to_are_answered(client, host, status):
    """DNS rebinding: a page at evil.example whose name now points at 127.0.0.1 sends Host: evil.example."""
    for method, path, body in (("GET", "/health", None), ("POST", "/v1/generate", {"steps": 2, "seed": 0})):
        response = client.request(method, path, json=body, headers={"Host": host})
        assert response.status_code == status, response.text
        if status != 200:
            message = response.json()["error"]["message"]
            assert len(message.splitlines()) == 1 and ("--allowed-hosts" in message or "no Host header" in message)


def test_allowed_hosts_widen_what_is_answered(pipeline):
    with TestClient(create_app(pipeline, limits=LIMITS, allowed_hosts=("model.lan",)),
                    base_url="http://model.lan") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"Host": "localhost"}).status_code == 403
    with TestClient(create_app(pipeline, limits=LIMITS, allowed_hosts=("*",)), base_url="http://any.where") as client:
        assert client.get("/health").status_code == 200
    assert {"localhost", "127.0.0.1", "::1", "10.0.0.5"} <= set(answered_hosts("10.0.0.5"))
    assert socket.gethostname().lower() in answered_hosts("0.0.0.0", ["proxy.lan"])
    assert "proxy.lan" in answered_hosts("0.0.0.0", ["proxy.lan"])


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_a_post_must_say_its_body_is_json(client, content_type):
    """A web page can post a form (or text/plain) anywhere without a CORS preflight: such a body is refused."""
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/v1/generate", "/v1/completions"):
        response = client.post(path, content='{"steps": 2, "seed": 0}', headers=headers)
        assert response.status_code == 415 and "Content-Type: application/json" in response.json()["error"]["message"]
    ok = client.post("/v1/generate", content='{"steps": 2, "seed": 0}',
                     headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert ok.status_code == 200


def test_no_permissive_cors_headers(client):
    origin = {"Origin": "http://evil.example"}
    for response in (client.get("/health", headers=origin), client.get("/", headers=origin),
                     client.post("/v1/generate", json={"steps": 2, "seed": 0}, headers=origin),
                     client.options("/v1/generate", headers={**origin, "Access-Control-Request-Method": "POST"})):
        assert not any(name.lower().startswith("access-control-") for name in response.headers), response.headers


def test_a_client_leaving_while_sending_its_body_is_one_log_line(pipeline, caplog):
    """500 such clients wrote 2 MB of tracebacks: now each is one line, and the server goes on."""
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    errors: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = errors.append
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(collector)
    try:
        with caplog.at_level(logging.INFO, logger="unmask.serve"), \
                serving(create_app(pipeline, limits=LIMITS)) as url:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            for _ in range(3):
                with socket.create_connection((host, int(port))) as sock:
                    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
                                 b"\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ")
            deadline = time.time() + 30
            while len([r for r in caplog.records if r.name == "unmask.serve"]) < 3 and time.time() < deadline:
                time.sleep(0.05)
            assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    finally:
        uvicorn_log.removeHandler(collector)
    lines = [r for r in caplog.records if r.name == "unmask.serve"]
    assert len(lines) == 3 and all("disconnected while sending its request" in r.getMessage() for r in lines)
    assert all(r.exc_info is None for r in lines)
    assert not [r for r in errors if r.exc_info or "Exception" in r.getMessage()]
