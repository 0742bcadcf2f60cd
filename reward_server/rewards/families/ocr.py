"""``ocr`` (SPEC §13c): ANLS, the Average Normalised Levenshtein Similarity of DocVQA / TextVQA.

Both sides are lower-cased with runs of whitespace collapsed and the ends stripped (the DocVQA
evaluation's normalisation, nothing more: punctuation and accents are part of what was read).
``NL = levenshtein(p, g) / max(len(p), len(g))`` and the score is the best ``1 - NL`` over the
acceptable answers, cut to 0 from ``NL >= 0.5`` on, so a half-wrong reading earns nothing.

No separate hedge rule is needed: a hedge (``"Paris or Lyon"``) lengthens the answer, and the edit
distance charges for every extra character, so it scores below the bare answer (to 0 once half of
it is extra). rapidfuzz computes the distance in C with a cut-off, so a long response against a
short truth costs microseconds, not a quadratic table.
"""

from __future__ import annotations

import json

from rapidfuzz.distance import Levenshtein

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.family import RewardFamily, Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.textnorm import preview

THRESHOLD = 0.5  # NL at or above this scores 0 (the ANLS paper's tau)
MAX_ANSWERS = 256


def normalise(text: str) -> str:
    """Lower case, whitespace runs collapsed to one space, ends stripped (DocVQA's ANLS)."""
    return " ".join(text.lower().split())


def anls(prediction: str, answers: tuple[str, ...]) -> float:
    """The best ``1 - NL`` over already-normalised ``answers`` (0 where ``NL >= 0.5``)."""
    if not prediction:
        return 0.0
    best = 0.0
    for answer in answers:
        # With a cut-off rapidfuzz stops early and returns 1.0 once NL must exceed it.
        distance = Levenshtein.normalized_distance(prediction, answer, score_cutoff=THRESHOLD)
        if distance < THRESHOLD:
            best = max(best, 1.0 - distance)
    return best


def parse_answers(text: str) -> tuple[str, ...]:
    """The acceptable answers: a JSON list of strings, a JSON string, else the text itself.

    A list is how DocVQA and TextVQA ship their several annotators' answers; each must be a
    non-empty string (an empty answer would pay an empty response). A JSON string is also the text
    as written: ``"STOP"`` may be a JSON-encoded STOP or a sign that reads "STOP" with its quotes,
    and either reading of the truth is a correct answer."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = text
    if isinstance(value, str):
        values: list[object] = [value] if value == text else [value, text]
    elif isinstance(value, list):
        values = value
    else:
        values = [text]  # a bare number such as 2019 is read as written
    if not values:
        raise InvalidGroundTruth("ocr ground truth is an empty list; give at least one acceptable answer")
    if len(values) > MAX_ANSWERS:
        raise InvalidGroundTruth(f"ocr ground truth lists {len(values)} answers; at most {MAX_ANSWERS}")
    answers: list[str] = []
    for position, item in enumerate(values):
        if not isinstance(item, str):
            raise InvalidGroundTruth(
                f"ocr ground truth answer {position} is {type(item).__name__}, not a string: {preview(text)}"
            )
        folded = normalise(item)
        if not folded:
            raise InvalidGroundTruth(f"ocr ground truth answer {position} is empty: {preview(text)}")
        answers.append(folded)
    return tuple(dict.fromkeys(answers))


class Ocr(RewardFamily):
    name = "ocr"
    aliases = ("anls", "docvqa", "text_vqa")
    summary = "ANLS: 1 - normalised edit distance to the closest acceptable answer (0 from 0.5 on)"
    binary = False

    def parse_truth(self, text: str) -> tuple[str, ...]:
        return parse_answers(text)

    def score(self, span: str, truth: tuple[str, ...], options: ResolvedOptions) -> Score:
        prediction = normalise(span)
        return Score(anls(prediction, truth), parsed=prediction or None)
