"""A run's environment record names the installed versions and the numerics the run used."""

from __future__ import annotations

import json
import platform
from importlib import metadata

import torch

from rlrf.core import environment


def test_versions_are_the_installed_ones_and_python_s():
    found = environment.versions()
    assert found["python"] == platform.python_version()
    for name in environment.PACKAGES:
        assert found[name] == metadata.version(name), name


def test_versions_of_a_package_that_is_not_installed_read_none(monkeypatch):
    monkeypatch.setattr(environment, "PACKAGES", ("torch", "no-such-package-rlrf"))
    found = environment.versions()
    assert found["no-such-package-rlrf"] is None
    assert found["torch"] == metadata.version("torch")


def test_cpu_flags_are_read_from_the_first_flags_line():
    cpuinfo = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nflags\t: amx_tile\n"
    assert environment.cpu_flags(cpuinfo) == {
        "avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": False, "amx_tile": False}
    assert not any(environment.cpu_flags("").values())


def test_kernels_switch_follows_rlrf_cpu_kernels(monkeypatch):
    monkeypatch.delenv("RLRF_CPU_KERNELS", raising=False)
    assert environment.numerics()["cpu_kernels"] is True
    for off in ("0", "false", "No"):
        monkeypatch.setenv("RLRF_CPU_KERNELS", off)
        assert environment.numerics()["cpu_kernels"] is False
    monkeypatch.setenv("RLRF_CPU_KERNELS", "1")
    assert environment.numerics()["cpu_kernels"] is True


def test_numerics_record_the_dtype_given_and_torch_s_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        record = environment.numerics(torch.bfloat16)
        assert record["torch_threads"] == 1
        assert record["dtype"] == "bfloat16"
    finally:
        torch.set_num_threads(before)
    assert environment.numerics("float32")["dtype"] == "float32"
    assert environment.numerics()["dtype"] is None


def test_describe_is_json_ready_and_holds_versions_numerics_and_the_commit():
    record = json.loads(json.dumps(environment.describe(torch.float32)))
    assert set(record) == {"versions", "numerics", "git_commit"}
    assert record["git_commit"] is None or len(record["git_commit"]) >= 7  # this checkout's commit
    assert record["numerics"]["dtype"] == "float32"
    assert set(record["numerics"]["cpu_flags"]) == set(environment.CPU_FLAGS)
