"""The null reference: random again, drawing from other streams.

`random-null` ranks exactly as `random` does (the same policy, batch extras
and training), from the same first model, but its draws come from another
stream of the same seed; `random-null-2`, `random-null-3`, ... from further
streams. Run beside random, its "saving" is what a policy shows by chance
alone: how far two random selections of the same size land apart on the
benchmark. A policy's saving means something only where it clears that band.

Random's own draws depend on the seed and the pool, not on the model: every
base model's random run of a seed labels the same images. The null streams
show how lucky those particular draws are.
"""

from __future__ import annotations

import re

import numpy as np

#: `ale bench al --policies random,random-null` (stream 1); `random-null-<k>` draws from stream k.
RANDOM_NULL = "random-null"
_NAME = re.compile(r"random-null(?:-([1-9][0-9]*))?")


def is_null(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def null_stream(name: str) -> int:
    """The stream a null reference draws from: 1 for `random-null`, k for `random-null-<k>`."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a null reference: use random-null or random-null-<k>, k = 1, 2, ...")
    return int(match.group(1) or 1)


def as_selection(name: str, seed: int) -> tuple[str, int]:
    """The policy and seed a bench cycle ranks with: a null reference is random under `null_seed`; any other is itself."""
    return ("random", null_seed(seed, null_stream(name))) if is_null(name) else (name, seed)


def null_seed(seed: int, stream: int = 1) -> int:
    """Another seed for random's draws, derived from `seed` and `stream` (fixed for both; no bench seed gives it)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(stream, (int, np.integer)) or stream < 1:
        raise ValueError(f"stream must be a positive integer, got {stream!r}")
    # 64 bits from the seed sequence: a bench seed (seed * 1000 + cycle) never reaches that range
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])
