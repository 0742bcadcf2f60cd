"""Per-prompt Beta posterior of the policy's success probability, with two-scale prior decay.

Pure arithmetic, no I/O: the store applies these functions, tests check them by hand.

Model (after VADE, arXiv 2511.18902: Beta posteriors, Thompson sampling for informative prompts,
two-scale prior decay; the exact constants of the paper were not available here, so the decay is
the documented design below, see docs/difficulty.md):

* Each prompt has ``Beta(alpha, beta)``; with no evidence it is the prior ``Beta(a0, b0)``.
  A correct rollout adds 1 to ``alpha``, an incorrect one 1 to ``beta`` (conjugate update).
* Decay moves the *evidence* (``alpha - a0``, ``beta - b0``) back towards the prior, never below
  it, so the mean drifts towards the prior mean and the posterior widens: Thompson sampling
  re-explores a prompt whose estimate may no longer describe the current policy.
* Fast scale, per observation of the prompt: before each new outcome is added the evidence is
  multiplied by ``local_decay`` (exponential forgetting, memory about ``1 / (1 - local_decay)``
  rollouts), so the estimate follows the prompt's *recent* outcomes as the policy improves.
* Slow scale, global training progress: evidence also halves every ``stale_half_life`` items
  scored by the service (the service's clock: every observed rollout of any prompt advances it by
  one), so a prompt not drawn for a long time is forgotten in proportion to how much the policy
  has trained since, not to wall time (which a paused run would count).

The slow decay is applied lazily, from the clock difference, whenever a state is read or updated:
no background job rewrites every row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DecayParams:
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    local_decay: float = 0.98  # per observation of this prompt; 1.0 disables
    stale_half_life: float = 200_000.0  # in observed items (the global clock); 0 disables

    def __post_init__(self) -> None:
        if not (self.prior_alpha > 0 and self.prior_beta > 0):
            raise ValueError("prior_alpha and prior_beta must be > 0")
        if not 0.0 < self.local_decay <= 1.0:
            raise ValueError("local_decay must be in (0, 1]")
        if not (self.stale_half_life >= 0 and math.isfinite(self.stale_half_life)):
            raise ValueError("stale_half_life must be a finite number >= 0 (0 disables)")


@dataclass(frozen=True)
class PromptState:
    """What is stored per prompt. ``alpha``/``beta`` are as of ``clock`` (slow decay not yet
    applied for the time since); ``n``/``successes`` count every observation ever (never decayed)."""

    prompt_id: str
    alpha: float
    beta: float
    n: int
    successes: int
    clock: int  # global clock at the last update
    updated_at: float  # unix time of the last update


def fresh(prompt_id: str, params: DecayParams, clock: int = 0, now: float = 0.0) -> PromptState:
    return PromptState(prompt_id, params.prior_alpha, params.prior_beta, 0, 0, clock, now)


def stale_weight(elapsed: int, params: DecayParams) -> float:
    """Weight left on evidence after ``elapsed`` clock ticks (items scored elsewhere)."""
    if params.stale_half_life <= 0 or elapsed <= 0:
        return 1.0
    return 0.5 ** (elapsed / params.stale_half_life)


def _shrink(alpha: float, beta: float, weight: float, params: DecayParams) -> tuple[float, float]:
    return (
        params.prior_alpha + weight * (alpha - params.prior_alpha),
        params.prior_beta + weight * (beta - params.prior_beta),
    )


def at_clock(state: PromptState, clock: int, params: DecayParams) -> tuple[float, float]:
    """``(alpha, beta)`` as of ``clock``: the slow decay for the time since the last update applied."""
    return _shrink(state.alpha, state.beta, stale_weight(clock - state.clock, params), params)


def observe(state: PromptState, correct: bool, clock: int, params: DecayParams, now: float) -> PromptState:
    """One rollout's outcome at global ``clock``: slow decay to now, fast decay, then the conjugate step."""
    alpha, beta = at_clock(state, clock, params)
    alpha, beta = _shrink(alpha, beta, params.local_decay, params)
    if correct:
        alpha += 1.0
    else:
        beta += 1.0
    return replace(
        state, alpha=alpha, beta=beta, n=state.n + 1, successes=state.successes + int(correct),
        clock=clock, updated_at=now,
    )


def mean(alpha: float, beta: float) -> float:
    return alpha / (alpha + beta)
