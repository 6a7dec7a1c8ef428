"""The null reference: random again, drawing from a second stream.

`random-null` ranks exactly as `random` does (the same policy, batch extras
and training), from the same first model, but its draws come from another
stream of the same seed. Run beside random, its "saving" is what a policy
shows by chance alone: how far two random selections of the same size land
apart on the benchmark. A policy's saving means something only where it
clears that band.
"""

from __future__ import annotations

import numpy as np

#: `ale bench al --policies random,random-null`.
RANDOM_NULL = "random-null"
#: The stream `random-null` draws from, beside random's own (stream 0: the seed itself).
NULL_STREAM = 1


def is_null(name: str) -> bool:
    return name == RANDOM_NULL


def as_selection(name: str, seed: int) -> tuple[str, int]:
    """The policy and seed a bench cycle ranks with: `random-null` is random under `null_seed(seed)`; any other is itself."""
    return ("random", null_seed(seed)) if is_null(name) else (name, seed)


def null_seed(seed: int) -> int:
    """Another seed for random's draws, derived from `seed` (the same seed gives the same null; no bench seed gives it)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    # 64 bits from the seed sequence: a bench seed (seed * 1000 + cycle) never reaches that range
    state = np.random.SeedSequence([int(seed), NULL_STREAM]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])
