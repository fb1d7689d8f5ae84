"""The names figures are reported with (one helper for every benchmark and the study), and the seeds of
every random stream."""

import builtins
import io
import platform

from unmask.runtime import derive_seed, device_name

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14 96-Core Processor
flags\t\t: fpu vme
processor\t: 1
model name\t: AMD EPYC 9B14 96-Core Processor
"""


def _with_cpuinfo(monkeypatch, text):
    """/proc/cpuinfo reads as ``text`` (None: it does not exist)."""
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            if text is None:
                raise FileNotFoundError(path)
            return io.StringIO(text)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)


def test_cpu_name_is_the_first_model_name_line(monkeypatch):
    _with_cpuinfo(monkeypatch, CPUINFO)
    assert device_name("cpu") == "AMD EPYC 9B14 96-Core Processor"


def test_cpu_name_falls_back_to_platform(monkeypatch):
    _with_cpuinfo(monkeypatch, None)
    assert device_name("cpu") == (platform.processor() or platform.machine())
    _with_cpuinfo(monkeypatch, "processor\t: 0\nflags\t\t: fpu\n")  # a cpuinfo without model names (ARM)
    assert device_name("cpu") == (platform.processor() or platform.machine())


def test_seeds_are_63_bit_stable_and_separate_streams():
    assert derive_seed(0, "noise", 1, 2) == derive_seed(0, "noise", 1, 2)
    seeds = {derive_seed(seed, purpose, *indices) for seed in (0, 1) for purpose in ("noise", "eval", "dropout")
             for indices in ((0,), (1,), (0, 1), (1, 0))}
    assert len(seeds) == 2 * 3 * 4  # no two streams share a seed
    assert all(0 <= s < 2**63 for s in seeds)
