"""Every sampler is a run: ``drive`` is the only loop that calls a denoiser during sampling, so the server
serves every model kind concurrently (a short request finishes while a long one streams)."""

import sys

import pytest
import torch
from runs import untrained_run

from unmask.generation import generate_text
from unmask.models import DiT, DiTConfig
from unmask.pipeline import load
from unmask.sampling import SamplerConfig, generate, generate_long
from unmask.sampling.autoregressive import generate_autoregressive
from unmask.sampling.blocks import CachedContext, RecomputedContext, generate_blocks

DRIVE = ("drive", "run.py")


def _inside_drive() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == DRIVE[0] and frame.f_code.co_filename.endswith(f"sampling/{DRIVE[1]}"):
            return True
        frame = frame.f_back
    return False


class Watched:
    """Counts the forward passes of ``model`` and those made outside ``drive``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = self.outside = 0
        self.handle = model.register_forward_pre_hook(self._seen)

    def _seen(self, *_):
        self.calls += 1
        self.outside += not _inside_drive()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


@pytest.fixture(scope="module", params=["mdlm", "sedd", "d3pm", "ar", "bd3lm"])
def kind_run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    return untrained_run(root, request.param, length=32, scrambled=True, block_size=8)[0]


def test_every_kind_samples_through_drive(kind_run):
    pipeline = load(kind_run)
    requests = [dict(length=None), dict(prompt="it is"), dict(length=20, prompt="a")]
    if not pipeline.kind.autoregressive:
        requests.append(dict(length=80, prompt="it is"))  # windows, or a sliding block cache
    with Watched(pipeline.model) as watched:
        for request in requests:
            generate_text(pipeline, SamplerConfig(steps=4), num_samples=2, **request)
    assert watched.calls > 0 and watched.outside == 0


def test_the_library_samplers_call_through_drive():
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=12, length=16, n_layers=1, hidden=16, n_heads=2, cond_dim=8, dropout=0.0)).eval()
    causal = DiT(DiTConfig(vocab_size=12, length=16, n_layers=1, hidden=16, n_heads=2, cond_dim=8, dropout=0.0,
                           causal=True)).eval()
    common = dict(mask_id=11, generator=torch.Generator().manual_seed(0))
    with Watched(model) as watched, Watched(causal) as watched_causal:
        for sampler in ("ancestral", "cached", "first_hitting", "analytic"):
            generate(model, SamplerConfig(sampler=sampler, steps=4), batch_size=2, length=16, **common)
        generate(model, SamplerConfig(order="margin", steps=4), batch_size=2, length=16, **common)
        generate_long(model, SamplerConfig(steps=4), batch_size=2, total_length=40, window=16, **common)
        generate_blocks(CachedContext(model, 4), SamplerConfig(steps=2), batch_size=2, length=30, block_size=4,
                        **common)
        generate_blocks(RecomputedContext(model, 4, 16, 11), SamplerConfig(steps=2), batch_size=2, length=12,
                        block_size=4, **common)
        template = torch.full((16,), 11)
        template[0] = 0
        generate_autoregressive(causal, batch_size=2, length=16, template=template, **common)
        assert watched.calls > 20 and watched_causal.calls == 15
        assert watched.outside == 0 and watched_causal.outside == 0
        model(torch.zeros(1, 16, dtype=torch.long), torch.zeros(1))  # the check sees a call outside drive
        assert watched.outside == 1
