"""The built-in reward families, one module each (SPEC §1, §3-§6, §13).

Declared here by name, aliases and ``module:Class`` so that the registry knows every accepted
name without importing a family's dependencies (math imports sympy, grounding shapely);
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
)
