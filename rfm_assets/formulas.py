"""The score formulas every engine and every rule set share (docs/contract.md): FM_score
and RFM_score from the R, F and M scores and the weights."""

import numpy as np


def combined_scores(
    r: np.ndarray, f: np.ndarray, m: np.ndarray, weights: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """(FM_score, RFM_score) with the weights (wR, wF, wM), in the documented operation order.

    FM_score = floor((wF*F + wM*M) / (wF + wM) + 0.5); RFM_score = (wR*R + wF*F + wM*M) /
    (wR + wF + wM). The Spark engine does the same double operations in the same order.
    """
    w_r, w_f, w_m = (float(w) for w in weights)
    fm = np.floor((w_f * f + w_m * m) / (w_f + w_m) + 0.5).astype(np.int64)
    rfm = (w_r * r + w_f * f + w_m * m) / (w_r + w_f + w_m)
    return fm, rfm
