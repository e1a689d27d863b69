"""The Keys-Finding Maze world: grid, generator, searches and plan checking.

A maze is a W × H grid (x = column, y = row, 4-neighbour moves) of free cells, walls,
keys and doors. Stepping on a key picks it up for good; a door can be entered only
while its key is held. The generator builds *rooms in sequence* — K full partitions,
each pierced by one door — so every key is necessary, then confirms it with a
breadth-first search over (position, keys held) states and rejects mazes that fail.

The reasoning trace is one A* search per sub-goal (key, its door, next key, …, goal),
written in the Searchformer convention: a node is `create`d when pushed on the open
list and `close`d when expanded, each with its cost from the phase's start and its
Manhattan distance to the sub-goal (see docs/KEYS_MAZE.md in the shared docs).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

Cell = tuple[int, int]  # (x, y)
State = tuple[Cell, int]  # (position, bitmask of keys held) in the plan search

COLOURS = ("blue", "red", "green", "yellow", "purple", "orange", "pink", "brown", "white", "black")
_MOVES = ((1, 0), (-1, 0), (0, 1), (0, -1))  # fixed order: the trace is deterministic


@dataclass(frozen=True)
class Maze:
    """One maze. `keys[i]` and `doors[i]` share colour i; the order is the order of use."""

    width: int
    height: int
    walls: frozenset[Cell]
    keys: tuple[tuple[str, Cell], ...]
    doors: tuple[tuple[str, Cell], ...]
    start: Cell
    goal: Cell

    def in_bounds(self, cell: Cell) -> bool:
        return 0 <= cell[0] < self.width and 0 <= cell[1] < self.height

    def neighbours(self, cell: Cell) -> Iterator[Cell]:
        """Cells one move away that are inside the grid and not walls (doors included)."""
        x, y = cell
        for dx, dy in _MOVES:
            nxt = (x + dx, y + dy)
            if self.in_bounds(nxt) and nxt not in self.walls:
                yield nxt

    def door_index(self) -> dict[Cell, int]:
        return {cell: i for i, (_, cell) in enumerate(self.doors)}

    def key_index(self) -> dict[Cell, int]:
        return {cell: i for i, (_, cell) in enumerate(self.keys)}


# --- searches over (position, keys held) --------------------------------------------
def shortest_plan(maze: Maze, unusable_key: int | None = None) -> list[Cell] | None:
    """A shortest feasible path from start to goal, or None (BFS over (cell, key bitmask)).

    `unusable_key` makes one key impossible to pick up: the goal must then be unreachable
    for that key to be necessary.
    """
    keys, doors = maze.key_index(), maze.door_index()

    def held_after(cell: Cell, held: int) -> int:
        k = keys.get(cell)
        return held | (1 << k) if k is not None and k != unusable_key else held

    first = (maze.start, held_after(maze.start, 0))
    parent: dict[State, State | None] = {first: None}
    queue = deque([first])
    while queue:
        state = queue.popleft()
        cell, held = state
        if cell == maze.goal:
            return _unwind(parent, state)
        for nxt in maze.neighbours(cell):
            door = doors.get(nxt)
            if door is not None and not held >> door & 1:
                continue
            following = (nxt, held_after(nxt, held))
            if following not in parent:
                parent[following] = state
                queue.append(following)
    return None


def _unwind(parent: dict[State, State | None], state: State | None) -> list[Cell]:
    path = []
    while state is not None:
        path.append(state[0])
        state = parent[state]
    return path[::-1]


def every_key_necessary(maze: Maze) -> bool:
    """Whether removing any single key makes the goal unreachable."""
    return all(shortest_plan(maze, unusable_key=i) is None for i in range(len(maze.keys)))


# --- the A* trace ----------------------------------------------------------------
@dataclass(frozen=True)
class SearchEvent:
    """One line of a Searchformer trace: `create|close x y c<g> c<h>`."""

    kind: str  # "create" or "close"
    cell: Cell
    cost: int  # g: moves from the phase's start
    heuristic: int  # h: Manhattan distance to the sub-goal

    def words(self) -> str:
        return f"{self.kind} {self.cell[0]} {self.cell[1]} c{self.cost} c{self.heuristic}"


def manhattan(a: Cell, b: Cell) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def astar(maze: Maze, source: Cell, target: Cell, held: frozenset[int]) -> tuple[list[Cell], list[SearchEvent]]:
    """A* from `source` to `target` with locked doors blocked; (path, trace events).

    Ties on f = g + h go to the smaller h (deeper node), then to the earlier push, so
    the trace is a deterministic function of the maze.
    """
    doors = maze.door_index()
    events: list[SearchEvent] = []
    best = {source: 0}
    parent: dict[Cell, Cell | None] = {source: None}
    closed: set[Cell] = set()
    counter = 0
    open_list = [(manhattan(source, target), manhattan(source, target), counter, source)]
    events.append(SearchEvent("create", source, 0, manhattan(source, target)))
    while open_list:
        _, h, _, cell = heapq.heappop(open_list)
        if cell in closed:
            continue  # a stale entry, superseded by a cheaper push
        closed.add(cell)
        events.append(SearchEvent("close", cell, best[cell], h))
        if cell == target:
            return _unwind_cells(parent, target), events
        for nxt in maze.neighbours(cell):
            door = doors.get(nxt)
            if (door is not None and door not in held and nxt != target) or nxt in closed:
                continue
            cost = best[cell] + 1
            if cost >= best.get(nxt, cost + 1):
                continue
            best[nxt], parent[nxt] = cost, cell
            h_next = manhattan(nxt, target)
            counter += 1
            heapq.heappush(open_list, (cost + h_next, h_next, counter, nxt))
            events.append(SearchEvent("create", nxt, cost, h_next))
    raise ValueError(f"sub-goal {target} unreachable from {source}")  # generator bug: mazes are checked


def _unwind_cells(parent: dict[Cell, Cell | None], cell: Cell) -> list[Cell]:
    path = []
    node: Cell | None = cell
    while node is not None:
        path.append(node)
        node = parent[node]
    return path[::-1]


@dataclass(frozen=True)
class Phase:
    """One sub-goal of the trace and the A* search that reaches it."""

    label: str  # "key blue x y" / "door blue x y" / "goal x y"
    path: list[Cell]
    events: list[SearchEvent]

    def words(self) -> str:
        return " ".join([f"subgoal {self.label}", *(event.words() for event in self.events)])


def solve_in_phases(maze: Maze) -> list[Phase]:
    """The per-sub-goal A* searches: key 0, door 0, key 1, door 1, …, goal."""
    targets: list[tuple[str, Cell, int | None]] = []
    for i, ((colour, key), (_, door)) in enumerate(zip(maze.keys, maze.doors)):
        targets += [(f"key {colour} {key[0]} {key[1]}", key, i), (f"door {colour} {door[0]} {door[1]}", door, None)]
    targets.append((f"goal {maze.goal[0]} {maze.goal[1]}", maze.goal, None))
    phases, here, held = [], maze.start, set()
    for label, target, picks_up in targets:
        path, events = astar(maze, here, target, frozenset(held))
        phases.append(Phase(label, path, events))
        here = target
        if picks_up is not None:
            held.add(picks_up)
    return phases


def join_paths(phases: list[Phase]) -> list[Cell]:
    """The whole plan: each phase's path, without repeating the cell where phases meet."""
    plan = list(phases[0].path)
    for phase in phases[1:]:
        plan += phase.path[1:]
    return plan


# --- checking a plan ---------------------------------------------------------------
def check_plan(maze: Maze, plan: list[Cell]) -> str | None:
    """Why `plan` is infeasible, or None when it is feasible."""
    if not plan:
        return "empty plan"
    if plan[0] != maze.start:
        return f"starts at {plan[0]}, not at the start {maze.start}"
    if plan[-1] != maze.goal:
        return f"ends at {plan[-1]}, not at the goal {maze.goal}"
    keys, doors = maze.key_index(), maze.door_index()
    held = {keys[plan[0]]} if plan[0] in keys else set()
    for step, (before, cell) in enumerate(zip(plan, plan[1:]), start=1):
        if manhattan(before, cell) != 1:
            return f"step {step} jumps from {before} to {cell}"
        if not maze.in_bounds(cell):
            return f"step {step} leaves the grid at {cell}"
        if cell in maze.walls:
            return f"step {step} enters a wall at {cell}"
        if cell in doors and doors[cell] not in held:
            return f"step {step} enters the {maze.doors[doors[cell]][0]} door without its key"
        if cell in keys:
            held.add(keys[cell])
    return None


# --- generation ------------------------------------------------------------------
@dataclass(frozen=True)
class MazeSpec:
    """What the generator draws from: grid size, number of key pairs, obstacle density."""

    width: int
    height: int
    min_keys: int
    max_keys: int
    wall_density: float  # probability that a room cell becomes an obstacle


def generate_maze(rng: random.Random, spec: MazeSpec, max_tries: int = 1000) -> Maze:
    """Draw mazes until one is solvable with every key necessary."""
    for _ in range(max_tries):
        maze = _draw(rng, spec, rng.randint(spec.min_keys, spec.max_keys))
        if maze is not None and shortest_plan(maze) is not None and every_key_necessary(maze):
            return maze
    raise ValueError(f"no valid maze in {max_tries} draws for {spec}")


def _draw(rng: random.Random, spec: MazeSpec, n_keys: int) -> Maze | None:
    # Canonical layout: rooms are vertical strips left to right, one door per partition.
    width, height = spec.width, spec.height
    room_widths = _split(rng, width - n_keys, n_keys + 1)
    lefts = [sum(room_widths[:i]) + i for i in range(n_keys + 1)]  # first column of each room
    doors = [(lefts[i] + room_widths[i], rng.randrange(height)) for i in range(n_keys)]
    walls = {(door[0], y) for door in doors for y in range(height) if y != door[1]}
    # The cells in front of a door stay free, so the door is never bricked up.
    beside_doors = {(x + dx, y) for x, y in doors for dx in (-1, 1)}
    rooms = []
    for i, room_width in enumerate(room_widths):
        cells = [(x, y) for x in range(lefts[i], lefts[i] + room_width) for y in range(height)]
        free = _connected_room(rng, cells, beside_doors, spec.wall_density)
        if free is None or (i < n_keys and len(free) < 2):
            return None
        walls |= set(cells) - set(free)
        rooms.append(free)
    start, key0 = rng.sample(rooms[0], 2)
    keys = [key0] + [rng.choice(room) for room in rooms[1:n_keys]]
    goal = rng.choice(rooms[-1])
    colours = COLOURS[:n_keys]
    return _orient(rng, Maze(width, height, frozenset(walls), tuple(zip(colours, keys)),
                             tuple(zip(colours, doors)), start, goal))


def _connected_room(rng: random.Random, cells: list[Cell], keep_free: set[Cell], density: float,
                    tries: int = 50) -> list[Cell] | None:
    """The free cells of a room with random obstacles, redrawn until they form one region.

    Redrawing one room at a time (rather than whole mazes) keeps large, dense mazes cheap:
    the chance that every room comes out connected at once shrinks with their number.
    """
    for _ in range(tries):
        free = [c for c in cells if c in keep_free or rng.random() >= density]
        if free and _is_connected(free):
            return free
    return None


def _is_connected(cells: list[Cell]) -> bool:
    remaining = set(cells)
    stack = [remaining.pop()]
    while stack:
        x, y = stack.pop()
        for dx, dy in _MOVES:
            nxt = (x + dx, y + dy)
            if nxt in remaining:
                remaining.remove(nxt)
                stack.append(nxt)
    return not remaining


def _split(rng: random.Random, total: int, parts: int) -> list[int]:
    """`total` columns into `parts` rooms, each at least one column wide."""
    if total < parts:
        raise ValueError(f"{total} columns left beside the partitions cannot hold {parts} rooms")
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def _orient(rng: random.Random, maze: Maze) -> Maze:
    """Mirror (and, on square grids, transpose) so the rooms do not always run left to right."""
    flip_x, flip_y = rng.random() < 0.5, rng.random() < 0.5
    transpose = maze.width == maze.height and rng.random() < 0.5

    def move(cell: Cell) -> Cell:
        x = maze.width - 1 - cell[0] if flip_x else cell[0]
        y = maze.height - 1 - cell[1] if flip_y else cell[1]
        return (y, x) if transpose else (x, y)

    return Maze(maze.width, maze.height, frozenset(move(c) for c in maze.walls),
                tuple((colour, move(c)) for colour, c in maze.keys),
                tuple((colour, move(c)) for colour, c in maze.doors), move(maze.start), move(maze.goal))
