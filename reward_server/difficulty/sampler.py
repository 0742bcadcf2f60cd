"""Thompson sampling for informative prompts (VADE's selection step).

A GRPO group of ``G`` rollouts teaches something only if its rewards differ, which happens with
probability ``1 - p^G - (1 - p)^G`` for a prompt the policy solves with probability ``p``. That
is largest at ``p = 1/2`` and, for every ``G``, a decreasing function of ``|p - 1/2|``, as is
the Bernoulli variance ``p (1 - p)``: ranking by either gives the same choice, so ``G`` needs no
setting. Thompson sampling draws one ``p~ ~ Beta(alpha, beta)`` per candidate and takes the
``k`` largest ``p~ (1 - p~)``: a prompt with little evidence has a wide posterior and gets drawn
near 1/2 often enough to be explored; a prompt known to be solved (or hopeless) rarely does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def thompson_select(alphas: Sequence[float], betas: Sequence[float], k: int, seed: int | None = None) -> list[int]:
    """Indices of ``k`` distinct candidates, most informative draw first. ``k`` must not exceed
    the number of candidates (the caller turns that into a 422)."""
    count = len(alphas)
    if len(betas) != count:
        raise ValueError("alphas and betas differ in length")
    if not 0 <= k <= count:
        raise ValueError(f"k={k} must be between 0 and the number of candidates ({count})")
    if k == 0:
        return []
    rng = np.random.default_rng(seed)
    draws = rng.beta(np.asarray(alphas, dtype=np.float64), np.asarray(betas, dtype=np.float64))
    score = draws * (1.0 - draws)
    if k < count:
        chosen = np.argpartition(-score, k - 1)[:k]
    else:
        chosen = np.arange(count)
    # Stable order: best first, ties by candidate position, so a seed always gives the same list.
    order = np.lexsort((chosen, -score[chosen]))
    return [int(i) for i in chosen[order]]
