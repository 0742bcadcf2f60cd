"""The built-in reward families, one module each (SPEC §1, §3-§6, §13).

Declared here by name, aliases and ``module:Class`` so that the registry knows every accepted
name without importing a family's dependencies (grounding imports shapely, ocr rapidfuzz; math
imports math-verify and sympy only in its worker processes);
``tests/test_reward_registry.py`` checks that each class declares the same names.
"""

from __future__ import annotations

_HERE = "reward_server.rewards.families"

#: (canonical name, aliases, "module:Class"); the paper's five first, then SPEC §13's.
BUILTINS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("yes_no", ("yorn", "binary"), f"{_HERE}.yes_no:YesNo"),
    ("mcq", ("multiple_choice", "choice"), f"{_HERE}.mcq:MultipleChoice"),
    ("chart", ("numeric", "numerical", "chartqa", "doc", "ocr_number"), f"{_HERE}.chart:Chart"),
    ("grounding", ("iou", "rec", "bbox", "detection"), f"{_HERE}.grounding:Grounding"),
    ("open_ended", ("open", "caption", "free_form", "bmas"), f"{_HERE}.open_ended:OpenEnded"),
    ("math", ("math_verify", "latex", "free_form_math"), f"{_HERE}.math:Math"),
    ("temporal_grounding", ("tiou", "tvg", "video_grounding", "moment"),
     f"{_HERE}.temporal_grounding:TemporalGrounding"),
    ("ocr", ("anls", "docvqa", "text_vqa"), f"{_HERE}.ocr:Ocr"),
    ("counting", ("count",), f"{_HERE}.counting:Counting"),
    ("point", ("click", "pointing", "gui_click"), f"{_HERE}.point:PointInBox"),
)
