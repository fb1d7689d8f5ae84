"""Throughput and latency of ``unmask serve`` under load from 1, 4 and 16 clients, with batching on and off.

Usage::

    python benchmarks/serve.py [--run RUN_DIR] [--requests N] [--steps T] [--json OUT.json] [--quick]

Two servers run side by side, each ``unmask serve`` in a process of its own on a loopback port:
batching on (``--max-batch 64``: every waiting request joins the running batch at the next step,
one denoiser call per step for all of them) and batching off (``--max-batch 1``: each request has
one row, so requests run one at a time). For each number of clients (1, 4, 16) the two servers
take turns, so that load from other processes falls on both alike: ``--requests`` requests per
configuration (fixed prompts, seeds 0, 1, ...), spread over the clients, each client sending its
next request when its answer arrives (non-streamed ``POST /v1/generate``, one sample, the model's
length). Reported per configuration:

- ``requests_per_s``: requests / wall time from the first request sent to the last answer;
- ``tokens_per_s``: generated tokens (the masked positions filled, prompt excluded) / that time;
- ``p50_s``, ``p99_s``: latency of a request as the client sees it (queueing included);
- ``denoiser_calls``: the server's denoiser calls for the configuration (batched calls count once).

Every answer is checked against the other server's answer to the same request: the same seed gives
the same text with batching on or off (``answers_match``). The ratio line compares the batched and
one-at-a-time throughput at 16 clients (goal: at least 4x).

Without ``--run`` a model of the ``tiny`` preset's shape (4 layers, hidden 256, length 128, BPE
vocabulary 4096) is trained for one step in a temporary folder: its weights do not change the work
of a request. ``--quick`` uses a 1-layer, hidden-32, length-32 character model and 8 requests, to
check that the benchmark runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from unmask.checkpoint import resolve_checkpoint
from unmask.config import apply_overrides, load_preset
from unmask.data import load_tokenizer
from unmask.runtime import device_name
from unmask.train import train

CLIENTS = (1, 4, 16)
MODES = {"on": 64, "off": 1}  # --max-batch of each server
PROMPTS = ["It is a truth", "However little known", "The", "In want of", "A single man", "My dear", "", "Then"]
QUICK_OVERRIDES = ["model.n_layers=1", "model.hidden=32", "model.n_heads=2", "model.cond_dim=16", "data.tokenizer=char",
                   "data.length=32"]
TARGET = 4.0


def make_run(folder: Path, quick: bool) -> Path:
    """A run of the tiny preset's shape (or the quick one), trained for one step."""
    overrides = ["train.max_steps=1", "train.eval_every=1000", "train.tensorboard=false", "train.global_batch=4",
                 "train.micro_batch=4", *(QUICK_OVERRIDES if quick else [])]
    train(apply_overrides(load_preset("tiny"), overrides), folder / "run", progress=False)
    return folder / "run"


class Server:
    """``unmask serve RUN --port 0 --max-batch N`` in a process of its own."""

    def __init__(self, run: Path, max_batch: int, threads: int | None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "unmask", "serve", str(run), "--port", "0", "--max-batch", str(max_batch)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        line = self.process.stderr.readline()
        if " at http" not in line:
            raise SystemExit(f"the server did not start: {line}{self.process.stderr.read()}")
        self.url = line.split(" at ")[1].split()[0].rstrip("/")
        threading.Thread(target=self.process.stderr.read, daemon=True).start()  # keep its log from blocking it

    def calls(self) -> int:
        return httpx.get(f"{self.url}/health").json()["denoiser_calls"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def load(server: Server, bodies: list[dict], clients: int) -> tuple[float, list[float], list[dict]]:
    """Send ``bodies`` from ``clients`` closed-loop clients: (wall seconds, latencies, answers in order)."""
    answers: list[dict | None] = [None] * len(bodies)
    latencies: list[float] = [0.0] * len(bodies)
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=600) as http:
                for i in range(index, len(bodies), clients):
                    sent = time.perf_counter()
                    response = http.post("/v1/generate", json=bodies[i])
                    latencies[i] = time.perf_counter() - sent
                    response.raise_for_status()
                    answers[i] = response.json()
        except BaseException as err:  # reported by the caller
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return wall, latencies, answers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="serve this run (default: a one-step run of the tiny preset's shape)")
    parser.add_argument("--requests", type=int, help="requests per configuration (default 64; --quick 8)")
    parser.add_argument("--steps", type=int, default=32, help="sampling steps per request")
    parser.add_argument("--sampler", default="cached", help="sampler of every request")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the servers (default: torch's own)")
    parser.add_argument("--json", type=Path, help="write the rows and the setting to this JSON file")
    parser.add_argument("--quick", action="store_true", help="a tiny model and 8 requests: checks that it runs")
    args = parser.parse_args(argv)
    requests = args.requests or (8 if args.quick else 64)

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp), args.quick)
        servers = {mode: Server(run, max_batch, args.threads) for mode, max_batch in MODES.items()}
        try:
            rows = measure(servers, run, requests, args)
        finally:
            for server in servers.values():
                server.stop()

    import torch

    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    setting = {"date": date, "machine": f"{device_name('cpu')}, {os.cpu_count()} CPUs", "torch": torch.__version__,
               "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "run": str(args.run) if args.run else ("quick" if args.quick else "tiny preset, 1 step"),
               "requests": requests, "steps": args.steps, "sampler": args.sampler, "threads": args.threads}
    print(f"# {date}  {setting['machine']}  torch {setting['torch']}  run {setting['run']}")
    print(f"{'batching':>8} {'clients':>7} {'req/s':>8} {'tokens/s':>9} {'p50 s':>7} {'p99 s':>7} {'calls':>6} match")
    for row in rows:
        print(f"{row['batching']:>8} {row['clients']:>7} {row['requests_per_s']:>8.2f} {row['tokens_per_s']:>9.0f} "
              f"{row['p50_s']:>7.3f} {row['p99_s']:>7.3f} {row['denoiser_calls']:>6} {row['answers_match']}")
    on, off = (next(r for r in rows if r["clients"] == CLIENTS[-1] and r["batching"] == mode) for mode in MODES)
    ratio = on["requests_per_s"] / off["requests_per_s"]
    print(f"\n{CLIENTS[-1]} clients: batched / one at a time = {ratio:.2f}x requests/s (goal >= {TARGET:g}x: "
          f"{'PASS' if ratio >= TARGET else 'MISS'})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"setting": setting, "rows": rows, "ratio_16_clients": ratio}, indent=1))
        print(f"wrote {args.json}")


def measure(servers: dict[str, Server], run: Path, requests: int, args: argparse.Namespace) -> list[dict]:
    """Both servers in turns, for each number of clients; every answer checked against the other server's."""
    bodies = [{"prompt": PROMPTS[i % len(PROMPTS)], "steps": args.steps, "sampler": args.sampler, "seed": i}
              for i in range(requests)]
    tokenizer = load_tokenizer(resolve_checkpoint(run) / "tokenizer")
    fixed = [1 + len(tokenizer.encode(body["prompt"])) for body in bodies]  # BOS and the prompt
    for server in servers.values():  # warm-up: first calls build kernels and caches
        load(server, bodies[:2], 2)
    rows = []
    for clients in CLIENTS:
        answers = {}
        for mode, server in servers.items():
            calls = server.calls()
            wall, latencies, answers[mode] = load(server, bodies, clients)
            generated = sum(len(sample["tokens"]) - fixed[i] for i, answer in enumerate(answers[mode])
                            for sample in answer["samples"])
            rows.append({"batching": mode, "max_batch": MODES[mode], "clients": clients, "requests": requests,
                         "seconds": wall, "requests_per_s": requests / wall, "tokens_per_s": generated / wall,
                         "p50_s": statistics.median(latencies), "p99_s": percentile(latencies, 0.99),
                         "denoiser_calls": server.calls() - calls})
        match = all(a["samples"] == b["samples"] for a, b in zip(answers["on"], answers["off"]))
        for row in rows[-len(servers):]:
            row["answers_match"] = match
    return rows


if __name__ == "__main__":
    main()
