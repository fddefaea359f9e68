"""What a later cycle trains on, beyond "the newest generated data" (config section `data`).

    coherence filter   drop generated examples whose log-likelihood under the base is below data.min_coherence
    accumulate         keep every generated example of earlier cycles too (policy: accumulate)
    mix_seed           add K seed examples back, drawn afresh each cycle from the first n_seed
The loop asks the setting which text to score (Setting.generated_text) and calls `combine` to build the cycle's rows; the
counts it returns are written into the cycle's record, so a report can say what was kept and dropped.
"""

from __future__ import annotations

import random
from typing import Any

from traitloop.config import DataConfig


def combine(
    new_rows: list[dict[str, Any]],
    previous_rows: list[dict[str, Any]],
    seed_rows: list[dict[str, Any]],
    policy: DataConfig,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The training rows of cycle k >= 1 from its new rows, cycle k-1's rows and the seed rows."""
    carried = [r for r in previous_rows if r.get("source") != "seed"] if policy.policy == "accumulate" else []
    mixed = random.Random(seed).sample(seed_rows, min(policy.mix_seed, len(seed_rows))) if policy.mix_seed else []
    rows = carried + new_rows + mixed
    return rows, {"n_new": len(new_rows), "n_accumulated": len(carried), "n_seed_mixed": len(mixed)}
