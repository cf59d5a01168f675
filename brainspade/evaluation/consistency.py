"""Label-image consistency: a segmenter trained on real slices segments the synthetic images.

If an image shows the anatomy of the label map it was generated from, a segmenter trained on real
slices finds that label map again: Dice against the generating labels measures the agreement
(the same segmenter on real held-out slices is the reference it can reach; the Dice is
`metrics.consistency_dice`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Segment = Callable[[np.ndarray], np.ndarray]  # images (N, H, W) -> label ids (N, H, W), each slice on its own
