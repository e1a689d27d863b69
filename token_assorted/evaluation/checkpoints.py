"""Which checkpoint each method kept: results.json's `methods[].checkpoint`, its check, report.md's section.

A curriculum (Curriculum-Replace, Coconut, Coconut-Pause, iCoT) keeps only models of its final
stage (lm/methods/: `Method.final`); every model records in `token_assorted.json` which one it
is, `checkpoint` {"epoch": 1-based, "stage": its curriculum stage or null, "final_stage": bool}.
A method's results.json entry carries its model's record; with several seeds, epoch and stage
are lists in seed order and final_stage holds only when it holds for every seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.errors import DataError

CHECKPOINT_FIELDS = ("epoch", "stage", "final_stage")
STAGED = ("curriculum", "coconut", "icot", "coconut-pause")  # the methods with a curriculum of stages


def checkpoint_of(meta: dict[str, Any]) -> dict[str, Any]:
    """A model's checkpoint record; a model saved before it was recorded: its best epoch, final only
    for a method without stages."""
    if isinstance(meta.get("checkpoint"), dict):
        return meta["checkpoint"]
    return {"epoch": meta.get("best_epoch"), "stage": None, "final_stage": meta.get("strategy") not in STAGED}


def kept_checkpoint(metas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """results.json's `checkpoint` of a method from its models' `token_assorted.json`, one per seed."""
    records = [checkpoint_of(meta) for meta in metas]
    epochs = [r.get("epoch") for r in records]
    stages = [r.get("stage") for r in records]
    final = all(bool(r.get("final_stage", True)) for r in records)
    if len(records) == 1:
        return {"epoch": epochs[0], "stage": stages[0], "final_stage": final}
    return {"epoch": epochs, "stage": stages, "final_stage": final}


def check_checkpoint(source: str, where: str, record: Any) -> None:
    """Refuse a malformed `checkpoint` record, naming the field."""
    if not isinstance(record, dict) or set(record) != set(CHECKPOINT_FIELDS):
        raise DataError(source, f"keys must be exactly {list(CHECKPOINT_FIELDS)}", field=where)
    if not isinstance(record["final_stage"], bool):
        raise DataError(source, f"expected true or false, got {record['final_stage']!r}", field=f"{where}.final_stage")
    for key in ("epoch", "stage"):
        values = record[key] if isinstance(record[key], list) else [record[key]]
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) for v in values):
            raise DataError(source, f"expected an integer >= 0, null or a list of them, got {record[key]!r}",
                            field=f"{where}.{key}")


def checkpoint_section(results: dict[str, Any]) -> list[str]:
    """report.md's section: which model each method kept."""
    kept = [m for m in results["methods"] if "checkpoint" in m]
    if not kept:
        return []
    lines = ["## Kept checkpoints", "",
             ("The model each method was scored with: the best validation epoch among those of its final stage "
              "(curricula: Curriculum-Replace, Coconut, Coconut-Pause, iCoT; the others have one stage)."), "",
             "| method | epoch | stage | final stage |", "|---|---|---|---|"]

    def cell(value: Any) -> str:
        values = value if isinstance(value, list) else [value]
        return " / ".join("–" if v is None else str(v) for v in values)

    for m in kept:
        record = m["checkpoint"]
        lines.append(f"| {m['name']} | {cell(record['epoch'])} | {cell(record['stage'])} | "
                     f"{'yes' if record['final_stage'] else '**no**'} |")
    return lines + [""]
