"""rlrf.core.memory: a stage's cyclic garbage is collected once it returns (or raises)."""

from __future__ import annotations

import gc
import weakref

import pytest

from rlrf.core.memory import release_memory, releases_memory


class _Node:
    pass


def test_releases_memory_collects_cycles_left_by_the_stage():
    gc.disable()  # only the decorator may collect
    try:
        refs = []

        @releases_memory
        def stage(x):
            a, b = _Node(), _Node()
            a.other, b.other = b, a  # a cycle, like trainer <-> model <-> callbacks
            refs.append(weakref.ref(a))
            return x + 1

        assert stage(1) == 2
        assert refs[0]() is None
    finally:
        gc.enable()


def test_releases_memory_passes_errors_through():
    @releases_memory
    def broken():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        broken()
    release_memory()  # callable on its own, no-op where there is no glibc
