"""Keys-Finding Maze as a Task: prompt/trace/plan tokens, generator presets, plan checker.

One rendered example (`generate(1, 3, width=5, height=3, min_keys=1, max_keys=1,
wall_density=0.1)`; the steps wrapped here):

    question: start 2 0 goal 4 1 wall 3 1 wall 3 2 key blue 2 1 door blue 3 0
    steps:    ["subgoal key blue 2 1 create 2 0 c0 c1 close 2 0 c0 c1 create 1 0 c1 c2
                create 2 1 c1 c0 close 2 1 c1 c0",
               "subgoal door blue 3 0 create 2 1 c0 c2 close 2 1 c0 c2 create 1 1 c1 c3
                create 2 2 c1 c3 create 2 0 c1 c1 close 2 0 c1 c1 create 3 0 c2 c0
                create 1 0 c2 c2 close 3 0 c2 c0",
               "subgoal goal 4 1 create 3 0 c0 c2 close 3 0 c0 c2 create 4 0 c1 c1
                create 2 0 c1 c3 close 4 0 c1 c1 create 4 1 c2 c0 close 4 1 c2 c0"]
    answer:   plan 2 0 plan 2 1 plan 2 0 plan 3 0 plan 4 0 plan 4 1

Every token is one space-separated word. A step is one phase (one sub-goal's A* search)
rather than one create/close line: a phase is the unit of reasoning the trace is built
from, it keeps files compact, and the steps count equals the number of sub-goals. Models
see the steps joined by newlines, which a word-level tokenizer drops, so the split does
not change the token sequence. The maze itself is stored in the example's metadata
(width, height, walls, keys, doors, start, goal), so checking never re-parses the prompt.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from statistics import mean
from typing import Any

from ...core.errors import ConfigError, DataError
from ...core.io import read_records
from ..schema import Example
from .base import Task, Verdict, extract_solution, progress
from .maze_world import (
    COLOURS,
    Cell,
    Maze,
    MazeSpec,
    check_plan,
    generate_maze,
    join_paths,
    shortest_plan,
    solve_in_phases,
)

# Presets of the generator. "small" trains on a CPU in minutes (traces of ~100-400 words);
# "paper" is sized so the mean trace lands near the paper's 1312 CoT tokens.
PRESETS = {
    "small": MazeSpec(width=7, height=7, min_keys=1, max_keys=2, wall_density=0.15),
    "paper": MazeSpec(width=20, height=20, min_keys=2, max_keys=4, wall_density=0.25),
}
META_FIELDS = ("width", "height", "walls", "keys", "doors", "start", "goal")
MAX_SIDE = 256  # grid sides a data file may give (the paper preset is 20 x 20)
_NUMBER = re.compile(r"[0-9]{1,9}")  # bounded: int() refuses numbers over 4300 digits


# --- rendering ---------------------------------------------------------------------
def render_prompt(maze: Maze) -> str:
    """`start x y goal x y wall x y … key blue x y door blue x y …` (walls in row order)."""
    words = [f"start {maze.start[0]} {maze.start[1]}", f"goal {maze.goal[0]} {maze.goal[1]}"]
    words += [f"wall {x} {y}" for x, y in sorted(maze.walls, key=lambda c: (c[1], c[0]))]
    for (colour, key), (_, door) in zip(maze.keys, maze.doors):
        words += [f"key {colour} {key[0]} {key[1]}", f"door {colour} {door[0]} {door[1]}"]
    return " ".join(words)


def render_plan(plan: list[Cell]) -> str:
    return " ".join(f"plan {x} {y}" for x, y in plan)


def parse_plan(text: str) -> list[Cell] | None:
    """The cells of `plan x y plan x y …`, or None when the text is not exactly that."""
    words = text.split()
    if not words or len(words) % 3:
        return None
    plan = []
    for i in range(0, len(words), 3):
        tag, x, y = words[i:i + 3]
        if tag != "plan" or not _NUMBER.fullmatch(x) or not _NUMBER.fullmatch(y):
            return None
        plan.append((int(x), int(y)))
    return plan


def example_from_maze(maze: Maze) -> Example:
    phases = solve_in_phases(maze)
    return Example(question=render_prompt(maze), steps=[phase.words() for phase in phases],
                   answer=render_plan(join_paths(phases)), meta=maze_to_meta(maze))


# --- the maze in an example's metadata ------------------------------------------
def maze_to_meta(maze: Maze) -> dict[str, Any]:
    return {"width": maze.width, "height": maze.height,
            "walls": [[x, y] for x, y in sorted(maze.walls, key=lambda c: (c[1], c[0]))],
            "keys": [[colour, x, y] for colour, (x, y) in maze.keys],
            "doors": [[colour, x, y] for colour, (x, y) in maze.doors],
            "start": list(maze.start), "goal": list(maze.goal)}


def maze_from_meta(meta: dict[str, Any], path: str | Path | None = None, line: int | None = None) -> Maze:
    """Rebuild the maze from metadata; malformed fields are DataErrors naming the field."""
    for name in META_FIELDS:
        if name not in meta:
            raise DataError(path, "missing maze field", line=line, field=name)
    width, height = (_integer(meta[n], path, line, n) for n in ("width", "height"))
    for name, side in (("width", width), ("height", height)):
        if not 1 <= side <= MAX_SIDE:  # checking a plan searches every (cell, keys held) state
            raise DataError(path, f"must be in 1..{MAX_SIDE}, got {side}", line=line, field=name)
    walls = frozenset(_cell(c, path, line, "walls") for c in _list(meta["walls"], path, line, "walls"))
    keys = tuple(_coloured(item, path, line, "keys") for item in _list(meta["keys"], path, line, "keys"))
    doors = tuple(_coloured(item, path, line, "doors") for item in _list(meta["doors"], path, line, "doors"))
    if [c for c, _ in keys] != [c for c, _ in doors]:
        raise DataError(path, "keys and doors must have the same colours in the same order", line=line,
                        field="doors")
    if len(keys) > len(COLOURS):
        raise DataError(path, f"at most {len(COLOURS)} keys, got {len(keys)}", line=line, field="keys")
    start, goal = _cell(meta["start"], path, line, "start"), _cell(meta["goal"], path, line, "goal")
    named = [("walls", c) for c in walls] + [("keys", c) for _, c in keys] + [("doors", c) for _, c in doors]
    for name, (x, y) in [*named, ("start", start), ("goal", goal)]:
        if not (0 <= x < width and 0 <= y < height):
            raise DataError(path, f"cell ({x}, {y}) lies outside the {width}x{height} grid", line=line, field=name)
    return Maze(width, height, walls, keys, doors, start, goal)


def _integer(value: Any, path, line, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, f"expected an integer, got {value!r:.40}", line=line, field=field)
    return value


def _list(value: Any, path, line, field: str) -> list:
    if not isinstance(value, list):
        raise DataError(path, f"expected a list, got {type(value).__name__}", line=line, field=field)
    return value


def _cell(value: Any, path, line, field: str) -> Cell:
    if not isinstance(value, list) or len(value) != 2:
        raise DataError(path, f"expected [x, y], got {value!r:.40}", line=line, field=field)
    return (_integer(value[0], path, line, field), _integer(value[1], path, line, field))


def _coloured(value: Any, path, line, field: str) -> tuple[str, Cell]:
    if not isinstance(value, list) or len(value) != 3 or not isinstance(value[0], str):
        raise DataError(path, f"expected [colour, x, y], got {value!r:.40}", line=line, field=field)
    return value[0], _cell(value[1:], path, line, field)


# --- the task ------------------------------------------------------------------
class KeysMaze(Task):
    """Find the keys, open the doors in order, reach the goal; the answer is the plan."""

    name = "keys-maze"
    answer_rule = "plan feasibility (greedy; 1-Feasible-N over the samples)"

    def generate(self, n: int, seed: int, **options: Any) -> list[Example]:
        """`n` distinct mazes from `random.Random(seed)`; options as in generator_options()."""
        if n < 0:
            raise ConfigError(f"keys-maze generator: n must be >= 0, got {n}")
        spec = self.spec(**options)
        rng = random.Random(seed)
        examples, seen = [], set()
        with progress(None, "keys-maze", total=n) as bar:
            for _ in range(20 * n + 100):  # distinct prompts; a tiny grid may run out of mazes
                if len(examples) == n:
                    return examples
                try:
                    example = example_from_maze(generate_maze(rng, spec))
                except ValueError as exc:
                    raise ConfigError(f"keys-maze generator: {exc}") from None
                if example.question not in seen:
                    seen.add(example.question)
                    examples.append(example)
                    bar.update(1)
        if len(examples) < n:
            raise ConfigError(f"keys-maze generator: only {len(examples)} distinct mazes of {n} for {spec}")
        return examples

    @staticmethod
    def spec(preset: str = "small", width: int | None = None, height: int | None = None,
             min_keys: int | None = None, max_keys: int | None = None,
             wall_density: float | None = None) -> MazeSpec:
        """The preset's MazeSpec with any given option overriding it, checked."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown keys-maze preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        base = PRESETS[preset]
        spec = MazeSpec(width=base.width if width is None else width,
                        height=base.height if height is None else height,
                        min_keys=base.min_keys if min_keys is None else min_keys,
                        max_keys=base.max_keys if max_keys is None else max_keys,
                        wall_density=base.wall_density if wall_density is None else wall_density)
        _check_spec(spec)
        return spec

    def generator_options(self) -> dict[str, tuple[type, Any, str]]:
        return {
            "preset": (str, "small", f"maze size preset: {', '.join(PRESETS)} (options below override it)"),
            "width": (int, None, "grid width (default: the preset's)"),
            "height": (int, None, "grid height (default: the preset's)"),
            "min_keys": (int, None, "fewest key/door pairs per maze (default: the preset's)"),
            "max_keys": (int, None, "most key/door pairs per maze (default: the preset's)"),
            "wall_density": (float, None, "probability that a room cell is a wall (default: the preset's)"),
        }

    def stats(self, examples: list[Example]) -> dict[str, Any]:
        if not examples:
            return {}
        trace = [sum(len(step.split()) for step in ex.steps) for ex in examples]
        plans = [len(ex.answer.split()) // 3 for ex in examples]
        return {"mean_trace_tokens": round(mean(trace), 1), "max_trace_tokens": max(trace),
                "mean_plan_cells": round(mean(plans), 1),
                "mean_plan_tokens": round(mean(len(ex.answer.split()) for ex in examples), 1),
                "mean_prompt_tokens": round(mean(len(ex.question.split()) for ex in examples), 1),
                "mean_keys": round(mean(len(ex.meta.get("keys", [])) for ex in examples), 2),
                "grid_sizes": sorted({f"{ex.meta.get('width')}x{ex.meta.get('height')}" for ex in examples}),
                "mean_walls": round(mean(len(ex.meta.get("walls", [])) for ex in examples), 1)}

    def verify(self, example: Example, generated: str) -> Verdict:
        """Feasibility (the verdict) and optimality of the plan after the last `###`."""
        predicted = extract_solution(generated)
        plan = None if predicted is None else parse_plan(predicted)
        if plan is None:
            return Verdict(False, predicted, {"feasible": False, "optimal": False, "reason": "no parsable plan"})
        maze = maze_from_meta(example.meta)
        reason = check_plan(maze, plan)
        if reason is not None:
            return Verdict(False, predicted, {"feasible": False, "optimal": False, "reason": reason})
        best = shortest_plan(maze)
        optimal = best is not None and len(plan) == len(best)
        return Verdict(True, predicted, {"feasible": True, "optimal": optimal, "plan_cells": len(plan),
                                         "optimal_cells": None if best is None else len(best)})

    def load(self, path: str | Path) -> list[Example]:
        """Examples in the Coconut schema with the maze fields; each maze is validated."""
        examples = []
        for line, record in read_records(path):
            example = Example.from_dict(record, path=path, line=line)
            maze_from_meta(example.meta, path, line)
            examples.append(example)
        return examples

    def lexicon(self, max_side: int | None = None) -> list[str]:
        """Every word the generator can emit on grids up to `max_side` (default: the largest preset).

        Costs run up to c<W*H> (a search never exceeds the grid's cell count), coordinates
        up to max_side - 1; a word-level tokenizer built with this never meets an unknown word.
        """
        if max_side is None:
            max_side = max(max(spec.width, spec.height) for spec in PRESETS.values())
        words = ["start", "goal", "wall", "key", "door", "subgoal", "create", "close", "plan", *COLOURS]
        words += [str(i) for i in range(max_side)]
        return words + [f"c{i}" for i in range(max_side * max_side)]

    @staticmethod
    def looks_like(record: dict[str, Any]) -> bool:
        return all(name in record for name in ("walls", "keys", "doors", "start", "goal"))


def _check_spec(spec: MazeSpec) -> None:
    if not 1 <= spec.min_keys <= spec.max_keys <= len(COLOURS):
        raise ConfigError(f"keys-maze: need 1 <= min_keys <= max_keys <= {len(COLOURS)}, "
                          f"got {spec.min_keys}..{spec.max_keys}")
    if spec.height > MAX_SIDE or spec.width > MAX_SIDE:  # a 100000-wide grid would be drawn for hours
        raise ConfigError(f"keys-maze: grid sides are at most {MAX_SIDE} (as in a data file), got "
                          f"{spec.width}x{spec.height}")
    if spec.height < 2 or spec.width < 2 * spec.max_keys + 2:
        raise ConfigError(f"keys-maze: a {spec.width}x{spec.height} grid cannot hold {spec.max_keys} rooms "
                          f"in sequence (width >= {2 * spec.max_keys + 2}, height >= 2)")
    if not 0.0 <= spec.wall_density < 0.6:
        raise ConfigError(f"keys-maze: wall_density must be in [0, 0.6), got {spec.wall_density}")
