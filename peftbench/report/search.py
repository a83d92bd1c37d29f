"""The report's mark for a searching method (NAS-LoRA) whose architecture search did not engage."""

from __future__ import annotations

SEARCH_MARK = "‡"
SEARCH_NOTE = ("‡ the architecture search did not engage in k of n seeds (no architecture step, or the operation "
               "distribution within 0.01 of uniform): such a run is LoRA with a fixed, near-uniform operation mixture, "
               "not a NAS result.")


def unsearched(records: list[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """(method, dataset) -> (seeds whose architecture search did not engage, seeds), for the searching methods
    (records whose statistics say `search_engaged`) with at least one such seed."""
    counts: dict[tuple[str, str], list[int]] = {}
    for r in records:
        engaged = (r.get("statistics") or {}).get("search_engaged")
        if engaged is not None:
            counts.setdefault((r["method"], r["dataset"]), []).append(not engaged)
    return {key: (sum(flags), len(flags)) for key, flags in counts.items() if any(flags)}
