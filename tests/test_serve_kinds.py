"""The server serves every model kind concurrently (each request a run its batcher drives): while a long
request of the AR baseline or of block diffusion streams, a short one from another client finishes first.

Through the real server (``unmask serve`` in a process of its own, as users run it): clients in the test's own
process would share its interpreter lock with the batcher's thread and measure that instead.
"""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from runs import untrained_run  # noqa: E402
from served import alone  # noqa: E402

from unmask.pipeline import load  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("kind, length, long, short", [
    ("ar", 256, {"prompt": "it is", "length": 256}, {"prompt": "a", "length": 8}),
    ("bd3lm", 32, {"prompt": "it is", "length": 128, "steps": 8}, {"prompt": "a", "length": 16, "steps": 8}),
])
def test_a_short_request_finishes_while_a_long_one_streams(tmp_path, kind, length, long, short):
    run, _ = untrained_run(tmp_path, kind, length=length, scrambled=True, block_size=8)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "unmask", "serve", str(run), "--port", "0", "--device", "cpu"],
                              stderr=subprocess.PIPE, text=True, env=env)
    finished: dict[str, float] = {}
    answers: dict[str, dict] = {}
    try:
        line = server.stderr.readline()
        assert "unmask serve:" in line, line
        url = line.split(" at ")[1].split()[0].rstrip("/")
        streaming = threading.Event()

        def stream_long() -> None:
            with httpx.stream("POST", f"{url}/v1/generate", json={**long, "seed": 1, "stream": True},
                              timeout=120) as response:
                event = None
                for line in response.iter_lines():  # line by line, as the events arrive
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: ") and event == "step":
                        streaming.set()  # the long request is generating
                    elif line.startswith("data: ") and event == "done":
                        finished["long"], answers["long"] = time.perf_counter(), json.loads(line[6:])

        thread = threading.Thread(target=stream_long)
        thread.start()
        assert streaming.wait(60)
        answers["short"] = httpx.post(f"{url}/v1/generate", json={**short, "seed": 2}, timeout=120).json()
        finished["short"] = time.perf_counter()
        thread.join(120)
    finally:
        server.terminate()
        server.wait(60)
        server.stderr.close()
    assert finished["short"] < finished["long"], "the short request waited for the long one"
    # Each answer is what `unmask sample` gives for its request alone, however they shared the batcher.
    pipeline = load(run, device="cpu")
    for name, body in (("long", {**long, "seed": 1}), ("short", {**short, "seed": 2})):
        assert answers[name]["samples"][0]["tokens"] == alone(pipeline, body).tokens[0].tolist(), name
