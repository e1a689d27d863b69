"""Keys-Finding Maze: generated mazes are solvable, keys necessary, gold plans optimal,
bad plans rejected; the checks use a reference search written independently here."""

from __future__ import annotations

import json
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from token_assorted.core.errors import ConfigError, DataError
from token_assorted.data.schema import save_examples
from token_assorted.data.tasks.keys_maze import KeysMaze, maze_from_meta, parse_plan, render_plan
from token_assorted.data.tasks.maze_world import Maze, check_plan, every_key_necessary

TASK = KeysMaze()
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_shortest(maze: Maze, drop_key: int | None = None) -> int | None:
    """Plan length (cells) by BFS over (cell, keys held) — independent of maze_world."""
    keys = {cell: colour for i, (colour, cell) in enumerate(maze.keys) if i != drop_key}
    doors = {cell: colour for colour, cell in maze.doors}
    first = (maze.start, frozenset([keys[maze.start]]) if maze.start in keys else frozenset())
    seen, queue = {first}, deque([(first, 1)])
    while queue:
        (cell, held), length = queue.popleft()
        if cell == maze.goal:
            return length
        x, y = cell
        for nxt in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if not (0 <= nxt[0] < maze.width and 0 <= nxt[1] < maze.height) or nxt in maze.walls:
                continue
            if nxt in doors and doors[nxt] not in held:
                continue
            state = (nxt, held | {keys[nxt]} if nxt in keys else held)
            if state not in seen:
                seen.add(state)
                queue.append((state, length + 1))
    return None


def one(seed: int, **options):
    example = TASK.generate(1, seed, **options)[0]
    return example, maze_from_meta(example.meta), parse_plan(example.answer)


@FAST
@given(SEEDS)
def test_gold_plan_is_feasible_and_optimal(seed):
    example, maze, plan = one(seed)
    verdict = TASK.verify(example, TASK.trace_text(example) + TASK.solution_text(example))
    assert verdict.correct and verdict.details["feasible"] and verdict.details["optimal"]
    assert len(plan) == reference_shortest(maze)


@FAST
@given(SEEDS)
def test_every_key_is_necessary(seed):
    _, maze, _ = one(seed)
    assert 1 <= len(maze.keys) <= 2
    assert every_key_necessary(maze)
    for i in range(len(maze.keys)):
        assert reference_shortest(maze, drop_key=i) is None


def _verdict(example, plan):
    return TASK.verify(example, "### " + render_plan(plan))


@FAST
@given(SEEDS, st.data())
def test_mutated_plans_are_rejected(seed, data):
    example, maze, plan = one(seed)
    i = data.draw(st.integers(1, len(plan) - 2))
    for mutated, why in [(plan[1:], "starts"), (plan[:-1], "ends"), (plan[:i] + plan[i + 1:], "jumps")]:
        verdict = _verdict(example, mutated)
        assert not verdict.correct and not verdict.details["feasible"] and why in verdict.details["reason"]
    # A step into a wall (and back), otherwise a legal path.
    for j, cell in enumerate(plan):
        wall = next((w for w in _around(cell) if w in maze.walls), None)
        if wall is not None:
            verdict = _verdict(example, plan[:j + 1] + [wall] + plan[j:])
            assert not verdict.details["feasible"] and "wall" in verdict.details["reason"]
            break


@FAST
@given(SEEDS)
def test_door_without_its_key_is_rejected(seed):
    example, maze, plan = one(seed)
    door = maze.doors[0][1]
    enter = plan.index(door)
    detour = _path_avoiding(maze, maze.start, plan[enter - 1], avoid={maze.keys[0][1], *maze.walls})
    if detour is None:  # the key sits on the only way to the door
        return
    verdict = _verdict(example, detour + plan[enter:])
    assert not verdict.details["feasible"] and "without its key" in verdict.details["reason"]


@FAST
@given(SEEDS)
def test_detour_is_feasible_but_not_optimal(seed):
    example, maze, plan = one(seed)
    for j, cell in enumerate(plan):
        free = [c for c in _around(cell) if maze.in_bounds(c) and c not in maze.walls
                and c not in {d for _, d in maze.doors}]
        if free:
            verdict = _verdict(example, plan[:j + 1] + [free[0]] + plan[j:])
            assert verdict.correct and verdict.details["feasible"] and not verdict.details["optimal"]
            return


@pytest.mark.parametrize("text", ["", "plan 1", "plan a b", "move 1 2", "plan 1 2 plan", "plan -1 2", "plan ² 1"])
def test_unparsable_plans_are_rejected(text):
    example, _, _ = one(0)
    verdict = TASK.verify(example, "### " + text)
    assert not verdict.correct and verdict.details == {"feasible": False, "optimal": False,
                                                      "reason": "no parsable plan"}
    assert not TASK.verify(example, example.answer).correct  # no solution marker at all


def test_generation_is_deterministic_and_distinct():
    first, again, other = TASK.generate(8, 7), TASK.generate(8, 7), TASK.generate(8, 8)
    assert [e.to_dict() for e in first] == [e.to_dict() for e in again]
    assert [e.question for e in first] != [e.question for e in other]
    assert len({e.question for e in first}) == 8


def test_trace_is_one_astar_phase_per_subgoal():
    for example in TASK.generate(20, 3):
        maze = maze_from_meta(example.meta)
        assert len(example.steps) == 2 * len(maze.keys) + 1
        plan = parse_plan(example.answer)
        for step in example.steps:
            words = step.split()
            assert words[0] == "subgoal"
            label = 4 if words[1] == "goal" else 5
            target = (int(words[label - 2]), int(words[label - 1]))
            events = [words[k:k + 5] for k in range(label, len(words), 5)]
            assert all(len(e) == 5 and e[0] in ("create", "close") for e in events)
            assert all(e[3].startswith("c") and e[4].startswith("c") for e in events)
            assert events[0][0] == "create" and events[0][3] == "c0"  # the phase's start is pushed first
            last = events[-1]
            assert last[0] == "close" and (int(last[1]), int(last[2])) == target and last[4] == "c0"
            closed = {(int(e[1]), int(e[2])) for e in events if e[0] == "close"}
            assert target in closed and target in plan


def test_prompt_lists_the_whole_maze():
    for example in TASK.generate(10, 11):
        maze = maze_from_meta(example.meta)
        words = example.question.split()
        assert words[:6] == ["start", *map(str, maze.start), "goal", *map(str, maze.goal)]
        walls = {(int(words[k + 1]), int(words[k + 2])) for k, w in enumerate(words) if w == "wall"}
        assert walls == set(maze.walls)
        for kind, items in (("key", maze.keys), ("door", maze.doors)):
            listed = [(words[k + 1], (int(words[k + 2]), int(words[k + 3])))
                      for k, w in enumerate(words) if w == kind]
            assert listed == list(items)


def test_small_preset_is_small_and_paper_preset_is_large():
    small = TASK.stats(TASK.generate(30, 0))
    assert small["grid_sizes"] == ["7x7"] and small["max_trace_tokens"] <= 600
    assert 1 <= small["mean_keys"] <= 2
    paper = TASK.stats(TASK.generate(4, 0, preset="paper"))
    assert paper["grid_sizes"] == ["20x20"] and paper["mean_trace_tokens"] > 3 * small["mean_trace_tokens"]


def test_options_override_the_preset_and_bad_options_are_config_errors():
    example, maze, _ = one(5, width=9, height=6, min_keys=3, max_keys=3, wall_density=0.0)
    assert (maze.width, maze.height, len(maze.keys)) == (9, 6, 3)
    assert TASK.verify(example, "### " + example.answer).details["optimal"]
    for bad in [dict(preset="huge"), dict(width=3, max_keys=2), dict(min_keys=3, max_keys=2),
                dict(wall_density=0.9)]:
        with pytest.raises(ConfigError):
            TASK.generate(1, 0, **bad)
    assert TASK.generate(0, 0) == []
    with pytest.raises(ConfigError):
        TASK.generate(-1, 0)
    assert set(TASK.generator_options()) == {"preset", "width", "height", "min_keys", "max_keys", "wall_density"}


def test_load_round_trip_and_malformed_maze(tmp_path):
    examples = TASK.generate(3, 1)
    save_examples(tmp_path / "maze.jsonl", examples)
    assert TASK.load(tmp_path / "maze.jsonl") == examples
    assert TASK.looks_like(examples[0].to_dict())
    broken = [e.to_dict() for e in examples]
    broken[1]["walls"] = [[1, "x"]]
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(record) for record in broken))
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'walls'"):
        TASK.load(tmp_path / "bad.jsonl")


def test_lexicon_covers_generated_words():
    lexicon = set(TASK.lexicon(max_side=20))
    for example in TASK.generate(5, 2) + TASK.generate(2, 2, preset="paper"):
        words = set(example.question.split()) | set(example.answer.split())
        words |= {w for step in example.steps for w in step.split()}
        assert words <= lexicon


def test_check_plan_on_a_hand_made_maze():
    # 5x1 corridor: start, key, door, free, goal.
    maze = Maze(5, 1, frozenset(), (("blue", (1, 0)),), (("blue", (2, 0)),), (0, 0), (4, 0))
    assert check_plan(maze, [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]) is None
    assert "without its key" in check_plan(Maze(5, 1, frozenset(), (("blue", (4, 0)),), (("blue", (2, 0)),),
                                                (0, 0), (4, 0)), [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)])
    assert "leaves the grid" in check_plan(maze, [(0, 0), (0, 1), (0, 0), (1, 0), (2, 0), (3, 0), (4, 0)])


def _around(cell):
    x, y = cell
    return [(x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)]


def _path_avoiding(maze: Maze, source, target, avoid):
    """A shortest path over in-bounds cells not in `avoid` and not doors (test helper)."""
    doors = {d for _, d in maze.doors}
    parent, queue = {source: None}, deque([source])
    while queue:
        cell = queue.popleft()
        if cell == target:
            path = []
            while cell is not None:
                path.append(cell)
                cell = parent[cell]
            return path[::-1]
        for nxt in _around(cell):
            if maze.in_bounds(nxt) and nxt not in avoid and nxt not in doors and nxt not in parent:
                parent[nxt] = cell
                queue.append(nxt)
    return None


def test_module_docstring_example_is_what_the_generator_gives():
    example = TASK.generate(1, 3, width=5, height=3, min_keys=1, max_keys=1, wall_density=0.1)[0]
    assert example.question == "start 2 0 goal 4 1 wall 3 1 wall 3 2 key blue 2 1 door blue 3 0"
    assert example.answer == "plan 2 0 plan 2 1 plan 2 0 plan 3 0 plan 4 0 plan 4 1"
    assert example.steps[2] == ("subgoal goal 4 1 create 3 0 c0 c2 close 3 0 c0 c2 create 4 0 c1 c1 "
                                "create 2 0 c1 c3 close 4 0 c1 c1 create 4 1 c2 c0 close 4 1 c2 c0")
