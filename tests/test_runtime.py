"""The names figures are reported with: one helper for every benchmark and the study."""

import builtins
import platform
from pathlib import Path

import pytest

from unmask.runtime import device_name


def test_cpu_name_is_the_model_name_of_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")]
    if not names:
        pytest.skip("/proc/cpuinfo names no CPU model here")
    assert device_name("cpu") == names[0]


def test_cpu_name_falls_back_to_platform_without_proc_cpuinfo(monkeypatch):
    real_open = builtins.open

    def no_cpuinfo(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    assert device_name("cpu") == (platform.processor() or platform.machine())
