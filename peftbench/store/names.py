"""Checks of the values that name files and folders or go into every run, made when a file or flag is read (a bad
one is a one-line UserError there, never a failure run by run): names, seeds, numbers of method files and cards.

Records are filed under <out>/runs/<dataset>/<method>/seed<k>.json, so a dataset or method name must be one safe
folder name and a seed a non-negative integer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from ..errors import UserError

SAFE_NAME = "a single folder name (no '/', '\\', '..', leading '.' or control characters, at most 200 characters)"
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]|^\.")  # a separator, a control character, a leading dot ('.', '..', hidden)


def name_problem(value: object) -> str:
    """"" when `value` is one safe path component (see safe_name), else why not."""
    if not isinstance(value, str) or not value or len(value) > 200 or _UNSAFE.search(value):
        return f"must be {SAFE_NAME}, not {value!r}"
    return ""


def safe_name(value: object, what: str) -> str:
    """`value` if it is one safe path component: a non-empty string of at most 200 characters without '/', '\\',
    NUL or another control character, not starting with '.' (so neither '.' nor '..' nor hidden); otherwise a
    UserError "<what> must be a single folder name (...), not <value>". `what` names the file and key, e.g.
    "datasets/x.toml: name". Any other text is fine (a folder "mes données" names a card)."""
    if why := name_problem(value):
        raise UserError(f"{what} {why}")
    return value


def checked_number(value: object, what: str, integer: bool = False, positive: bool = True) -> int | float:
    """`value` if it is a finite number (an int with `integer`; a bool is neither) that is > 0 (`positive`) or
    >= 0; otherwise a UserError "<what> must be a positive number, not 'abc'"."""
    kinds = (int,) if integer else (int, float)
    if (isinstance(value, kinds) and not isinstance(value, bool) and (isinstance(value, int) or math.isfinite(value))
            and (value > 0 if positive else value >= 0)):
        return value
    kind = "integer" if integer else "number"
    raise UserError(f"{what} must be a {'positive' if positive else 'non-negative'} {kind}, not {value!r}")


SEED_LIMIT = 2**32  # NumPy's: np.random.seed takes 0 <= seed < 2**32


def safe_seeds(seeds: Iterable[object], what: str) -> list[int]:
    """`seeds`, each an integer 0 <= seed < SEED_LIMIT (a record is seed<k>.json; `seed*.json` must not match a
    'seed-1'), repeats left out, in their order; otherwise a UserError naming `what` (e.g. "--seeds '0,-1'")."""
    checked = [checked_number(s, f"{what}: each seed", integer=True, positive=False) for s in seeds]
    too_large = [s for s in checked if s >= SEED_LIMIT]
    if too_large:
        raise UserError(f"{what}: seed {too_large[0]} is too large; seeds are below 2**32 (NumPy's limit)")
    return list(dict.fromkeys(checked))
