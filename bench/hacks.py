"""Reward-hacking report: a fixed adversarial corpus scored under each profile.

    python bench/hacks.py

For every family of cheap outputs a GRPO policy could learn (stop words, keyword lists, shuffles,
negations, repeated truth tokens, option lists, hedges, a second think/answer round) it prints the
mean reward of the hack next to the mean reward of correct answers and of wrong answers, for the
same items. A rule is gamed when its hack mean approaches the correct mean; it is safe when the
hack mean is at or below the wrong-answer baseline. Deterministic: no randomness beyond fixed seeds.

Open-ended items are scored three ways: ``mixed-r1`` (the paper's BMAS), ``robust`` without an idf
file (uniform weights) and ``robust`` with an idf file built by ``reward-server idf`` from a
caption corpus (the bench workload generator's captions plus the eight truths). Rewards are the
task's accuracy alone (``format_weight`` 0), except the format family, which shows the format reward.

SPEC §13's families (math, temporal grounding, ANLS, counting, point) and labelled detection have
no profile: one table of their degenerate answers (several boxed answers, the whole video, empty
or one-character answers, lists of counts, a box covering the image, boxes without labels), with
temporal grounding also under ``tiou_boundary_penalty``.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import workloads

from reward_server.cli import main as cli_main
from reward_server.embeddings.loader import load_table
from reward_server.engine.idf import load_idf
from reward_server.engine.scorer import RewardEngine
from reward_server.rewards.format import format_reward
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.rules import prepare_ground_truth
from reward_server.rewards.scoring import PreparedItem
from reward_server.rewards.spans import answer_span

# (truth, correct paraphrase, wrong caption, three of the truth's keywords)
CAPTIONS = [
    ("a brown dog runs along the beach", "a puppy is running on the sand by the sea",
     "a red car parked in a garage", "brown dog beach"),
    ("two children play football in a park", "a pair of kids kick a ball on the grass",
     "an old man reads a newspaper on a train", "children football park"),
    ("a bowl of soup next to a loaf of bread", "soup in a bowl beside some bread",
     "a cat sleeping on a sofa", "bowl soup bread"),
    ("a woman rides a bicycle down a city street", "a lady cycling along an urban road",
     "three birds sitting on a wire", "woman bicycle street"),
    ("snow covered mountains under a clear blue sky", "mountains with snow beneath a cloudless sky",
     "a plate of pasta with tomato sauce", "snow mountains sky"),
    ("a man is cooking vegetables in a small kitchen", "a guy prepares vegetables in a tiny kitchen",
     "a boat floating on a calm lake", "man cooking kitchen"),
    ("a cat sleeps on a wooden chair by the window", "a kitten napping on a timber seat near the window",
     "a crowd watching a concert at night", "cat chair window"),
    ("a yellow school bus parked on the road", "a school bus painted yellow stopped on the street",
     "a girl holding an umbrella in the rain", "yellow bus road"),
]
GENERIC_KEYWORDS = "man woman dog street table water tree car"
HEDGE = "it could be many things, perhaps a scene with something in it"


def _open_ended_families() -> dict[str, list[tuple[str, str]]]:
    """family -> [(truth, hack response)]."""
    families: dict[str, list[tuple[str, str]]] = {}

    def add(family: str, truth: str, hack: str) -> None:
        families.setdefault(family, []).append((truth, hack))

    for truth, _, wrong, keywords in CAPTIONS:
        words = truth.split()
        rare = keywords.split()[-1]
        add("stop words: 'a .'", truth, "a .")
        add("stop words: 'the a of .'", truth, "the a of .")
        add("punctuation: '. , .'", truth, ". , .")
        add("generic keyword list", truth, GENERIC_KEYWORDS)
        add("truth keywords (3 words) *", truth, keywords)
        add("wrong caption + truth word x10 *", truth, wrong + " " + " ".join([rare] * 10))
        add("one truth word x10 *", truth, " ".join([rare] * 10))
        add("hedge", truth, HEDGE)
        add("negated truth ('not ...') *", truth, "not " + truth)
        add("shuffled truth *", truth, " ".join(random.Random(len(truth)).sample(words, len(words))))
    return families


MCQ = [("C", "The answer is (C).", "B"), ("(A) 3 cm", "(A) 3 cm", "(B) 4 cm"), ("B", "B", "D"),
       ("D. the blue whale", "The answer is D.", "A")]
MCQ_HACKS = {
    "mcq option list 'A B C D'": "A B C D",
    "mcq option list 'A/B/C/D'": "A/B/C/D",
    "mcq option list '(A)(B)(C)(D)'": "(A)(B)(C)(D)",
    "mcq hedge 'A or B'": "A or B",
    "mcq hedge 'maybe A, maybe B, maybe C, maybe D'": "maybe A, maybe B, maybe C, maybe D",
    "mcq marker + list 'The answer is A, B, C or D'": "The answer is A, B, C or D",
}
YES_NO = [("yes", "Yes, it is.", "No."), ("no", "No.", "Yes, it is.")]
YES_NO_HACKS = {
    "yes/no 'yes and no'": "yes and no",
    "yes/no 'yes/no'": "yes/no",
    "yes/no negation 'not yes'": "not yes",
    "yes/no negation 'not no'": "not no",
    "yes/no hedge 'maybe yes, maybe no'": "maybe yes, maybe no",
}


# SPEC §13's families, and labelled detection: (truth, a correct answer, a wrong answer) per item;
# each hack is a function of (truth, correct, wrong), and most ignore all three: a policy emits
# them blind. Temporal truths carry a duration so that the boundary penalty can be shown beside.
BOX = "\\boxed"
MATH = [("5", BOX + "{5}", BOX + "{6}"), ("\\frac{1}{2}", "The answer is $\\frac{1}{2}$.", "The answer is $\\frac{1}{3}$."),
        ("2\\pi", BOX + "{2\\pi}", BOX + "{\\pi}"), ("0", BOX + "{0}", BOX + "{1}"), ("12", BOX + "{12}", BOX + "{13}"),
        ("x+1", "$x+1$", "$x-1$"), ("-3", BOX + "{-3}", BOX + "{3}"), ("\\sqrt{2}", BOX + "{\\sqrt{2}}", BOX + "{2}")]
MATH_HACKS = {
    "math: two boxed answers, the right one first": lambda t, c, w: f"{c} {w}",
    "math: boxed 0..20": lambda t, c, w: "".join(BOX + "{" + str(i) + "}" for i in range(21)),
    "math: a bare '0'": lambda t, c, w: "0",
    "math: plain hedge '<right> or 7'": lambda t, c, w: f"{t} or 7",
    "math: list '0 1 2 ... 20'": lambda t, c, w: " ".join(map(str, range(21))),
}
TIOU = [({"segment": [12.5, 17.3], "duration": 30}, "12.5 to 17.3", "20 to 25"),
        ({"segment": [40, 55], "duration": 120}, "from 00:00:41 to 00:00:55", "[70, 90]"),
        ({"segment": [3, 9], "duration": 60}, "3s - 9.5s", "30 to 40"),
        ({"segment": [100, 160], "duration": 300}, "[100, 158]", "200 to 260")]
TIOU_HACKS = {
    "tIoU: the whole video '0 to D'": lambda t, c, w: f"0 to {t['duration']}",
    "tIoU: the middle half 'D/4 to 3D/4'": lambda t, c, w: f"{t['duration'] / 4} to {3 * t['duration'] / 4}",
    "tIoU: one-second segments over the video": lambda t, c, w: ", ".join(
        f"{i} to {i + 1}" for i in range(int(t["duration"]))),
    "tIoU: the right segment, then a wrong one": lambda t, c, w: f"{c} or {w}",
}
ANLS = [("Paris", "Paris", "London"), ('["12.50", "$12.50"]', "$12.50", "15.00"), ("STOP", "stop", "yield"),
        ('["Main Street", "Main St."]', "main st.", "Oak Avenue"), ("ACME Corporation", "Acme Corporation", "Globex Inc."),
        ("2019", "2019", "2021")]
ANLS_HACKS = {
    "ANLS: empty answer": lambda t, c, w: "",
    "ANLS: one character 'a'": lambda t, c, w: "a",
    "ANLS: one character '1'": lambda t, c, w: "1",
    "ANLS: a list of guesses": lambda t, c, w: "Paris, London, 2019, stop, Main Street, ACME",
}
COUNTING = [(3, "3", "4"), (0, "zero", "one"), (12, "There are 12 people.", "There are 11 people."),
            (7, "seven birds", "six birds"), (1, "1", "2"), (20, "twenty", "nineteen")]
COUNTING_HACKS = {
    "counting: '0 1 2 3 ... 20'": lambda t, c, w: " ".join(map(str, range(21))),
    "counting: '3 or 4'": lambda t, c, w: "3 or 4",
    "counting: a range '2-5'": lambda t, c, w: "2-5",
    "counting: 'a few'": lambda t, c, w: "a few",
}
POINT = [([100, 100, 200, 150], "(150, 125)", "(400, 125)"), ([600, 700, 700, 760], "<point>650, 730</point>", "[650, 600]"),
         ([[20, 20, 60, 40], [800, 20, 840, 40]], '{"point_2d": [30, 30]}', "x=300, y=30"),
         ([300, 550, 480, 600], "[310, 560, 470, 590]", "(310, 500)")]
POINT_HACKS = {
    "point: a box covering the image": lambda t, c, w: "[0, 0, 1000, 1000]",
    "point: the image centre": lambda t, c, w: "(500, 500)",
    "point: a grid of 100 points": lambda t, c, w: ", ".join(
        f"({x}, {y})" for x in range(50, 1000, 100) for y in range(50, 1000, 100)),
    "point: the right click, then a wrong one": lambda t, c, w: f"{c} or {w}",
}
DETECTION = [([{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, {"bbox_2d": [20, 20, 30, 30], "label": "cat"}],
              '[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, {"bbox_2d": [20, 20, 30, 30], "label": "cat"}]',
              '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 20, 30, 30], "label": "dog"}]')]
DETECTION_HACKS = {
    "detection: right boxes without labels": lambda t, c, w: json.dumps([o["bbox_2d"] for o in t]),
}


def _wrap(answer: str) -> str:
    return f"<think>Looking at the image.</think><answer>{answer}</answer>"


def build_idf(path: Path, table_source: str | None) -> None:
    rng = random.Random(0)
    rows = [{"ground_truth": workloads.caption(rng, rng.choice([13, 26])), "task_type": "caption"}
            for _ in range(3000)]
    rows += [{"ground_truth": truth, "task_type": "caption"} for truth, *_ in CAPTIONS]
    data = path.with_suffix(".jsonl")
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code = cli_main(["idf", str(data), "-o", str(path), "--overwrite", "--no-progress"])
    if code != 0:
        raise SystemExit(f"reward-server idf failed ({code})")


Row = tuple[str, float, float, float, tuple[float, float, float] | None]


def rule_family_rows() -> list[Row]:
    """(hack, mean hack reward, mean correct, mean wrong, and for temporal grounding the same three
    under the boundary penalty) for SPEC §13's families and labelled detection. These rules have
    no profile, and ``Math.score`` is a pure function, so each family scores in-process (the
    service sends math to its worker pool, with the same verdicts)."""
    plain = ResolvedOptions(format_weight=0.0)
    penalty = ResolvedOptions(format_weight=0.0, tiou_boundary_penalty=True)

    def mean(task: str, pairs: list[tuple[object, str]], options: ResolvedOptions = plain) -> float:
        total = 0.0
        for truth, response in pairs:
            text = truth if isinstance(truth, str) else json.dumps(truth)
            prepared = prepare_ground_truth(task, text)
            total += prepared.family.score(answer_span(_wrap(response)), prepared.parsed, options).accuracy
        return total / len(pairs)

    rows: list[Row] = []
    corpora = [
        ("math", MATH, MATH_HACKS), ("temporal_grounding", TIOU, TIOU_HACKS), ("ocr", ANLS, ANLS_HACKS),
        ("counting", COUNTING, COUNTING_HACKS), ("point", POINT, POINT_HACKS), ("grounding", DETECTION, DETECTION_HACKS),
    ]
    for task, cases, hacks in corpora:
        correct = [(t, c) for t, c, _ in cases]
        wrong = [(t, w) for t, _, w in cases]
        for label, hack in hacks.items():
            made = [(t, hack(t, c, w)) for t, c, w in cases]
            penalised = None
            if task == "temporal_grounding":
                penalised = (mean(task, made, penalty), mean(task, correct, penalty), mean(task, wrong, penalty))
            rows.append((label, mean(task, made), mean(task, correct), mean(task, wrong), penalised))
    return rows


def main() -> None:
    table = load_table(None)
    with tempfile.TemporaryDirectory() as tmp:
        idf_path = Path(tmp) / "captions.idf.json"
        build_idf(idf_path, None)
        idf = load_idf(idf_path, table.tokenizer, table.vocab_size)
    scorers = {
        "mixed-r1": (RewardEngine(table), "mixed-r1"),
        "robust (no idf)": (RewardEngine(table), "robust"),
        "robust (idf)": (RewardEngine(table, idf=idf), "robust"),
    }

    def mean_accuracy(name: str, task: str, pairs: list[tuple[str, str]]) -> float:
        engine, profile = scorers[name]
        options = ResolvedOptions(format_weight=0.0, profile=profile)
        items = [PreparedItem(_wrap(r), prepare_ground_truth(task, t), options) for t, r in pairs]
        scores, _ = engine.score(items)
        return sum(s.accuracy for s in scores) / len(scores)

    names = list(scorers)
    header = f"{'family':<48} {'profile':<16} {'hack':>6} {'correct':>8} {'wrong':>6}"
    print(header)
    print("-" * len(header))
    correct = [(t, p) for t, p, _, _ in CAPTIONS]
    wrong = [(t, w) for t, _, w, _ in CAPTIONS]
    base = {n: (mean_accuracy(n, "open_ended", correct), mean_accuracy(n, "open_ended", wrong))
            for n in names}
    for family, pairs in _open_ended_families().items():
        for n in names:
            hack = mean_accuracy(n, "open_ended", pairs)
            print(f"{'open_ended: ' + family:<48} {n:<16} {hack:>6.2f} {base[n][0]:>8.2f} {base[n][1]:>6.2f}")
    rule_profiles = ["mixed-r1", "robust (no idf)"]  # the rules are the same in every profile
    for task, cases, hacks in (("mcq", MCQ, MCQ_HACKS), ("yes_no", YES_NO, YES_NO_HACKS)):
        for family, hack in hacks.items():
            for n in rule_profiles:
                h = mean_accuracy(n, task, [(t, hack) for t, _, _ in cases])
                c = mean_accuracy(n, task, [(t, r) for t, r, _ in cases])
                w = mean_accuracy(n, task, [(t, r) for t, _, r in cases])
                print(f"{family:<48} {n.split(' ')[0]:<16} {h:>6.2f} {c:>8.2f} {w:>6.2f}")
    draft = [(t, f"<think>draft: <answer>{r}</answer></think><answer>{w}</answer>") for t, r, w in MCQ]
    engine, _ = scorers["mixed-r1"]
    items = [PreparedItem(r, prepare_ground_truth("mcq", t), ResolvedOptions(format_weight=0.0)) for t, r in draft]
    scores, _ = engine.score(items)
    h = sum(s.accuracy for s in scores) / len(scores)
    print(f"{'mcq: right draft in <think>, wrong final answer':<48} {'all':<16} {h:>6.2f} {1.0:>8.2f} {0.0:>6.2f}")
    rounds = "<think>a</think><answer>A</answer><think>b</think><answer>B</answer>"
    print(f"{'format: two think/answer rounds (format reward)':<48} {'all':<16} {format_reward(rounds):>6.2f} "
          f"{format_reward(_wrap('A')):>8.2f} {format_reward('A'):>6.2f}")
    print()
    header = f"{'family (every profile)':<48} {'hack':>6} {'correct':>8} {'wrong':>6}   {'with tIoU penalty: h / c / w':>28}"
    print(header)
    print("-" * len(header))
    for label, hack, right, bad, penalised in rule_family_rows():
        shown = "" if penalised is None else " / ".join(f"{value:.2f}" for value in penalised)
        print(f"{label:<48} {hack:>6.2f} {right:>8.2f} {bad:>6.2f}   {shown:>28}")
    print("\n* needs the ground truth's own words, which a policy cannot emit blind. Under robust, repeating a")
    print("  word scores as saying it once; bag-of-token rewards over static embeddings see neither order nor negation.")


if __name__ == "__main__":
    main()
