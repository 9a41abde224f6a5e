"""The checks of the training commands' options (`train`, `ablation`), made before any file is read or written."""
from __future__ import annotations

from .cli_common import require_at_least, require_at_least_one, require_below, require_positive, require_share
from .errors import InputError

SEED_LIMIT_REASON = "larger seeds draw the pairs of validation, held-out evaluation and calibration"


def check_training_options(args) -> None:
    """Raise InputError, in one line naming the option, for an out-of-range training option or no training data;
    each command is checked for the options it has."""
    given = vars(args)

    def those(*names) -> dict:
        """The given options among `names`, by name."""
        return {name: given[name] for name in names if given.get(name) is not None}
    require_share(**those("density_change"))
    require_at_least_one(**those("steps", "batch_size", "validate_every", "samples"))
    require_at_least(0, **those("seed", "phantoms", "loader_workers"))
    require_below(100, SEED_LIMIT_REASON, **those("seed"))
    require_positive(**those("learning_rate", "time_limit"))
    if not (given.get("ct") or given.get("sources") or given.get("phantoms")):
        sources = ", --sources" if "sources" in given else ""
        raise InputError(f"no training data: give --ct (repeatable){sources} or --phantoms N")
