"""Deterministic benchmark workloads (no downloads): caption-like GRPO batches, long texts, mixed tasks.

Everything is drawn from ``random.Random(seed)``, so a workload is a pure function of its arguments.
The ground truths of a workload depend only on ``seed``; the responses also depend on ``salt``, so a
benchmark can ask for fresh response texts on every repetition (no response cache can help) while
the ground truths repeat, as they do across GRPO epochs.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

_COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown", "grey", "orange", "purple", "pink", "golden", "silver", "dark", "pale"]
_SIZES = ["small", "large", "tiny", "huge", "tall", "short", "wide", "narrow", "long", "little", "big", "massive", "slender"]
_OBJECTS = ["dog", "cat", "man", "woman", "child", "boy", "girl", "car", "bus", "bicycle", "tree", "house", "table", "chair", "window", "door", "street", "river", "mountain", "bird", "horse", "boat", "bridge", "building", "lamp", "cup", "plate", "book", "phone", "laptop", "bag", "umbrella", "fence", "flower", "field", "road", "train", "airplane", "kite", "ball", "sign", "bench", "clock", "bottle", "sofa", "bed", "mirror", "shelf", "painting", "guitar", "truck", "motorcycle", "cloud", "sky", "beach", "wave", "rock", "hill", "forest", "garden", "pond"]
_VERBS = ["sits", "stands", "walks", "runs", "lies", "rests", "leans", "hangs", "floats", "flies", "waits", "looks", "plays", "holds", "carries", "crosses", "faces", "rides", "pulls", "pushes", "watches"]
_PLACES = ["next to", "in front of", "behind", "on top of", "under", "near", "beside", "across from", "inside", "around", "along", "above"]
_SCENES = ["in a busy city", "on a sunny afternoon", "under a cloudy sky", "at night", "in the rain", "in a quiet park", "on a crowded beach", "in a small kitchen", "at the train station", "in the snow", "during sunset", "in a meadow"]
_SYNONYMS = {
    "dog": "puppy", "cat": "kitten", "man": "gentleman", "woman": "lady", "child": "kid", "car": "vehicle",
    "large": "big", "small": "little", "huge": "enormous", "tiny": "minuscule", "sits": "is seated",
    "walks": "strolls", "runs": "jogs", "looks": "gazes", "near": "close to", "beside": "alongside",
    "house": "home", "road": "street", "boat": "ship", "picture": "photo", "grey": "gray",
}
_FILLER = (
    "The image shows a detailed scene with several elements.",
    "Overall the composition is balanced and the lighting is natural.",
    "In the background there are more details that are hard to make out.",
    "The photograph appears to have been taken with a standard camera.",
    "There is nothing else of particular interest in the picture.",
)


def _sentence(rng: random.Random) -> str:
    count = rng.choice(["A", "The", "One", "Two", "Three", "Several", "A few"])
    subject = f"{count} {rng.choice(_SIZES)} {rng.choice(_COLORS)} {rng.choice(_OBJECTS)}"
    obj = f"the {rng.choice(_COLORS)} {rng.choice(_OBJECTS)}"
    tail = rng.choice(["", f" {rng.choice(_SCENES)}", f", while {rng.choice(_OBJECTS)}s {rng.choice(_VERBS)} nearby"])
    return f"{subject} {rng.choice(_VERBS)} {rng.choice(_PLACES)} {obj}{tail}."


def caption(rng: random.Random, approx_tokens: int) -> str:
    """A caption-like paragraph of about ``approx_tokens`` BERT tokens (~13 tokens a sentence)."""
    sentences = [_sentence(rng) for _ in range(max(1, round(approx_tokens / 13)))]
    return " ".join(sentences)


def _paraphrase(rng: random.Random, truth: str) -> str:
    sentences = truth.split(". ")
    rng.shuffle(sentences)
    words = " ".join(sentences).split()
    return " ".join(_SYNONYMS.get(w, w) if rng.random() < 0.6 else w for w in words if rng.random() > 0.05)


def _contradict(rng: random.Random, truth: str) -> str:
    swaps = {**{c: rng.choice(_COLORS) for c in _COLORS}, **{o: rng.choice(_OBJECTS) for o in _OBJECTS}}
    words = truth.split()
    return " ".join(swaps.get(w, w) if rng.random() < 0.5 else w for w in words).replace(" is ", " is not ")


def response_for(rng: random.Random, truth: str, target_tokens: int) -> str:
    """One sampled response: paraphrase, truncate, pad or contradict the truth, about ``target_tokens`` long."""
    kind = rng.choice(("paraphrase", "truncate", "pad", "contradict", "unrelated"))
    if kind == "paraphrase":
        text = _paraphrase(rng, truth)
    elif kind == "truncate":
        words = truth.split()
        text = " ".join(words[: max(1, int(len(words) * rng.uniform(0.3, 0.9)))])
    elif kind == "pad":
        text = truth + " " + " ".join(rng.choice(_FILLER) for _ in range(rng.randint(2, 12)))
    elif kind == "contradict":
        text = _contradict(rng, truth)
    else:
        text = caption(rng, target_tokens)
    # Stretch or cut to the sampled length, so lengths spread over the requested range.
    words = text.split()
    want = max(1, int(target_tokens / 1.15))
    while len(words) < want:
        words += caption(rng, 40).split()
    text = " ".join(words[:want])
    if rng.random() < 0.5:
        text = f"<think>Let me describe the image carefully.</think> <answer>{text}</answer>"
    return text


@dataclass(frozen=True)
class Item:
    """One benchmark item, in the service's wire vocabulary."""

    response: str
    ground_truth: str
    task_type: str
    group_id: str


def grpo_open_ended(
    *, prompts: int = 64, per_prompt: int = 8, min_tokens: int = 100, max_tokens: int = 1000, seed: int = 0,
    salt: int = 0,
) -> list[Item]:
    """The GRPO step of the issue: ``prompts`` x ``per_prompt`` open-ended items, one truth per prompt.

    Truth and response lengths are uniform in [min_tokens, max_tokens] (approximately, in BERT tokens).
    """
    truth_rng = random.Random(seed)
    truths = [caption(truth_rng, truth_rng.randint(min_tokens, max_tokens)) for _ in range(prompts)]
    rng = random.Random(f"{seed}/{salt}")
    items = []
    for p, truth in enumerate(truths):
        for _ in range(per_prompt):
            response = response_for(rng, truth, rng.randint(min_tokens, max_tokens))
            items.append(Item(response, truth, "open_ended", f"p{p}"))
    return items


def long_text(*, items: int = 64, per_prompt: int = 8, response_tokens: int = 2000, truth_tokens: int = 500,
              seed: int = 1, salt: int = 0) -> list[Item]:
    """The long-text case: ~2,000-token responses against ~500-token ground truths."""
    truth_rng = random.Random(seed)
    prompts = max(1, items // per_prompt)
    truths = [caption(truth_rng, truth_tokens) for _ in range(prompts)]
    rng = random.Random(f"{seed}/{salt}")
    out = []
    for index in range(items):
        p = index % prompts
        out.append(Item(response_for(rng, truths[p], response_tokens), truths[p], "open_ended", f"p{p}"))
    return out


def _yes_no(rng: random.Random) -> tuple[str, str]:
    truth = rng.choice(["yes", "no"])
    said = truth if rng.random() < 0.6 else ("no" if truth == "yes" else "yes")
    return f"<think>Looking at the image.</think> <answer>{said.capitalize()}, it is.</answer>", truth


def _mcq(rng: random.Random) -> tuple[str, str]:
    truth = rng.choice("ABCD")
    said = truth if rng.random() < 0.5 else rng.choice("ABCD")
    return f"<think>Options considered.</think> <answer>({said})</answer>", f"({truth})"


def _chart(rng: random.Random) -> tuple[str, str]:
    value = rng.randint(1, 500) / 10
    said = value if rng.random() < 0.5 else value * rng.uniform(0.8, 1.2)
    return f"<think>Reading the bars.</think> <answer>{said:.1f}</answer>", f"{value:.1f}"


def _grounding(rng: random.Random) -> tuple[str, str]:
    x, y = rng.randint(0, 400), rng.randint(0, 400)
    w, h = rng.randint(20, 200), rng.randint(20, 200)
    dx, dy = rng.randint(-30, 30), rng.randint(-30, 30)
    truth = f"[{x}, {y}, {x + w}, {y + h}]"
    said = f"[{x + dx}, {y + dy}, {x + w + dx}, {y + h + dy}]"
    return f"<think>The object is here.</think> <answer>{said}</answer>", truth


def mixed(*, items: int = 512, seed: int = 2, salt: int = 0, families: str = "paper") -> list[Item]:
    """Every task type in equal shares, interleaved; open-ended ones are GRPO-shaped (8 per truth).
    ``families="paper"``: Mixed-R1's five; ``"all"``: and SPEC §13's (math, temporal grounding,
    OCR, counting, GUI point; math needs the ``[math]`` extra on the server)."""
    rng = random.Random(f"{seed}/{salt}")
    truth_rng = random.Random(seed)
    truths = [caption(truth_rng, truth_rng.randint(100, 1000)) for _ in range(max(1, items // 40))]
    makers = {"yes_no": _yes_no, "mcq": _mcq, "chart": _chart, "grounding": _grounding}
    if families == "all":
        makers.update({"math": _math, "temporal_grounding": _temporal, "ocr": _ocr, "counting": _counting,
                       "point": _point})
    tasks = (*makers, "open_ended")
    out = []
    for index in range(items):
        task = tasks[index % len(tasks)]
        if task == "open_ended":
            p = (index // 40) % len(truths)
            truth = truths[p]
            out.append(Item(response_for(rng, truth, rng.randint(100, 1000)), truth, task, f"p{p}"))
        else:
            response, truth = makers[task](rng)
            out.append(Item(response, truth, task, f"{task}{index // 8}"))
    return out


def _math(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 9), rng.randint(2, 12)
    said = rng.choice([f"{a}/{b}", f"\\frac{{{a}}}{{{b}}}", f"{a + 1}/{b}"])
    return f"<think>Dividing.</think> <answer>\\boxed{{{said}}}</answer>", f"\\frac{{{a}}}{{{b}}}"


def _temporal(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(0, 100)
    end = start + rng.randint(2, 30)
    shift = rng.randint(-3, 3)
    return (f"<think>Watching.</think> <answer>{start + shift} to {end + shift} seconds</answer>",
            json.dumps({"segment": [start, end], "duration": end + 40}))


def _ocr(rng: random.Random) -> tuple[str, str]:
    truth = rng.choice(["INVOICE 2024-118", "Total: $1,204.50", "Route 66 Diner", "Exit 12B"])
    said = truth if rng.random() < 0.5 else truth.replace("1", "l")
    return f"<think>Reading.</think> <answer>{said}</answer>", truth


def _counting(rng: random.Random) -> tuple[str, str]:
    truth = rng.randint(0, 20)
    said = truth if rng.random() < 0.5 else truth + rng.choice([-1, 1, 2])
    return f"<think>Counting.</think> <answer>{said}</answer>", str(truth)


def _point(rng: random.Random) -> tuple[str, str]:
    x, y = rng.randint(0, 900), rng.randint(0, 900)
    px, py = x + rng.randint(-40, 80), y + rng.randint(-40, 80)
    return f"<think>The button.</think> <answer>({px}, {py})</answer>", json.dumps({"bbox": [x, y, x + 60, y + 40]})
