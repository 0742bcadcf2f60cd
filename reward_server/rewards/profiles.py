"""Reward profiles (SPEC §6b): named, complete sets of reward rules a request may choose.

Two profiles share every rule of SPEC §2-§8 and differ only in the open-ended reward:

* ``mixed-r1`` (the default) is the paper's BMAS: the *sum* of two plain means of best-match
  cosines. A mean over the response's tokens is perfect for any subset of the truth's tokens, so
  a policy can raise it by saying less, commoner or repeated words (``a .`` scores about as well
  as a correct paraphrase).
* ``robust`` combines the same two directions as BERTScore does (Zhang et al., ICLR 2020): each a
  mean weighted by the tokens' idf, over *distinct* tokens, combined as an F-measure. Recall over
  the truth's rare words cannot be earned by stop words or punctuation, repeating a token adds
  nothing, and the harmonic mean is only high when both directions are.

This module is pure (no torch): the kernel computes the directional terms, :func:`f_measure`
turns them into the reward.
"""

from __future__ import annotations

from dataclasses import dataclass

from reward_server.errors import ItemFieldError


@dataclass(frozen=True)
class Profile:
    """One named rule set. ``weighted`` selects the robust open-ended reward."""

    name: str
    summary: str
    open_ended: str  # what the open-ended reward is, in words
    weighted: bool  # idf-weighted distinct tokens + F-measure (robust) instead of plain means + sum

    def info(self) -> dict[str, object]:
        """What ``/v1/info`` publishes about the profile."""
        return {"summary": self.summary, "open_ended": self.open_ended, "changes": list(self.changes)}

    @property
    def changes(self) -> tuple[str, ...]:
        """What differs from the default profile."""
        if not self.weighted:
            return ()
        return (
            (
                "open_ended: each direction is an idf-weighted mean over distinct tokens (the idf file "
                "of --idf-path; uniform weights without one)"
            ),
            (
                "open_ended: the two directions are combined as an F-measure 2PR/(P+R) (min(P, R) when "
                "either is <= 0), x2 for bmas_reduction=sum: the range stays [-2, 2] ([-1, 1] for mean)"
            ),
        )


MIXED_R1 = Profile(
    name="mixed-r1",
    summary="The paper's formulas (SPEC §2-§8), with hedged answers scoring 0.",
    open_ended="BMAS: mean best-match cosine response->truth plus truth->response (sum, [-2, 2])",
    weighted=False,
)
ROBUST = Profile(
    name="robust",
    summary="mixed-r1's rules, with an open-ended reward that stop words, keyword lists and "
    "repetition cannot raise.",
    open_ended="idf-weighted F-measure of the two directions over distinct tokens (x2 for sum, [-2, 2])",
    weighted=True,
)
PROFILES: dict[str, Profile] = {p.name: p for p in (MIXED_R1, ROBUST)}
DEFAULT_PROFILE = MIXED_R1.name
PROFILE_NAMES = tuple(PROFILES)


def parse_profile(name: str) -> Profile:
    """The profile called ``name`` (case-insensitive, ``_`` for ``-``); unknown names are a client
    error listing the valid ones."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    profile = PROFILES.get(key) if isinstance(key, str) else None
    if profile is None:
        raise ItemFieldError(
            "profile", f"unknown profile {name!r}; valid profiles: {', '.join(PROFILE_NAMES)}"
        )
    return profile


def f_measure(precision: float, recall: float) -> float:
    """BERTScore's combination of the two directions, in [-1, 1], 1 exactly when both are 1.

    The harmonic mean ``2PR / (P + R)`` for positive terms; cosines (static embeddings) can be
    negative, and there the harmonic mean is meaningless, so the smaller term is used instead.
    Both forms meet at 0, so the reward is continuous and never exceeds either direction.
    """
    if precision > 0.0 and recall > 0.0:
        return 2.0 * precision * recall / (precision + recall)
    return min(precision, recall)


__all__ = [
    "DEFAULT_PROFILE",
    "MIXED_R1",
    "PROFILES",
    "PROFILE_NAMES",
    "ROBUST",
    "Profile",
    "f_measure",
    "parse_profile",
]
