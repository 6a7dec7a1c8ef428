"""Image usefulness scores: pure numpy, no I/O.

Lower task score = more useful to label, because Label Studio serves tasks by
ascending prediction score.
"""

from __future__ import annotations

import numpy as np


def min_confidence(box_scores: np.ndarray) -> float:
    """Seed 000's default image confidence: the lowest box confidence.

    box_scores: (n,) in [0, 1]. An image with no boxes gives 1.0: nothing for
    an annotator to correct, so it is served last.
    """
    box_scores = np.asarray(box_scores, dtype=np.float64).reshape(-1)
    if box_scores.size == 0:
        return 1.0
    return float(np.clip(box_scores.min(), 0.0, 1.0))
