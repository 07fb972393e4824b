"""Which process this is when a stage runs under torchrun / accelerate launch.

Both launchers set RANK and WORLD_SIZE. Training leaves the rest to accelerate (DDP, FSDP,
DeepSpeed through its config); the stages that write records use these numbers to split the users
between processes and to let only the main process write whole files.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def shard(items: list, *, of: int | None = None, index: int | None = None) -> list:
    """This process's share of `items` (every world_size-th, from its rank): disjoint, and all
    together exactly `items`."""
    of = world_size() if of is None else of
    index = rank() if index is None else index
    return items[index::of]
