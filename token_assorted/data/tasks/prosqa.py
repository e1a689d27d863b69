"""ProsQA: "Is Tom a lempus or scrompus?" over a random DAG, and a generator for it.

One official example (edges shortened):

    question: "Every shumpus is a rempus. ... Tom is a terpus. ... Is Tom a lempus or scrompus?"
    steps:    ["Tom is a terpus.", "Every terpus is a brimpus.", "Every brimpus is a lempus."]
    answer:   "Tom is a lempus."
    meta:     idx_to_symbol, edges [[parent, child], ...], root, target, neg_target

The generator follows Coconut's construction (Appendix A.2; see docs METHOD.md): the DAG
grows from seed nodes 0 and 1, each new node draws Poisson(1.5) parents, from nodes
descending from seed 0 only, from seed 1 only, or from any node, favouring deep parents;
nodes without parents become person names. What the paper leaves open was read off the
official valid split: the entity asked about is the seed whose exclusive leaf lies
furthest, the right option is that farthest leaf (always so in the official data), the
wrong option a leaf only the other seed reaches, and questions need 3–6 steps. Two
parameters were fitted to the official statistics: only 2.5 % of new nodes are names
(plain Poisson(1.5) would make 22 % of them names and give too few edges), and the node
count is drawn per graph as N(22.7, 2.0), which after filtering gives 22.8 nodes, 36.3
edges, 3.75 steps (official: 22.8, 36.3, 3.75). Smaller graphs and shorter paths for CPU
experiments come from the size options (`nodes`, `min_steps`, `max_steps`).
"""

from __future__ import annotations

import math
import random
import re
import statistics
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError, DataError
from ...core.io import read_records
from ..schema import Example
from .base import Task, Verdict, extract_solution, progress
from .lexicon import PROSQA_CONCEPTS, PROSQA_NAMES

# Coconut's construction constants (Appendix A.2).
P_FROM_SEED0_SIDE = 0.35  # parents drawn among nodes labelled 0 or 1
P_FROM_SEED1_SIDE = 0.35  # parents drawn among nodes labelled 0 or 2
DEPTH_WEIGHT = 1.5  # a parent candidate weighs depth * 1.5 + 1
MAX_TRIES = 1000  # graphs drawn per question before the options are declared unsatisfiable
QUESTION_RE = re.compile(r"Is (\w+) an? (\w+) or (\w+)\?\s*$")
LEXICON_NODES = len(PROSQA_NAMES) + len(PROSQA_CONCEPTS)  # the most nodes a graph can name


@dataclass
class Graph:
    """A generated DAG: parents of each node in construction order, and its labels."""

    parents: list[list[int]]
    labels: list[int]  # bit 1: descends from seed 0, bit 2: from seed 1

    @property
    def size(self) -> int:
        return len(self.parents)

    def children(self) -> list[list[int]]:
        children: list[list[int]] = [[] for _ in range(self.size)]
        for child, parents in enumerate(self.parents):
            for parent in parents:
                children[parent].append(child)
        return children


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: exact and fast for the small means used here.
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _weighted_sample(rng: random.Random, pool: list[int], weights: list[float], k: int) -> list[int]:
    """k distinct items of `pool`, each draw proportional to its weight."""
    pool, weights, chosen = list(pool), list(weights), []
    for _ in range(min(k, len(pool))):
        index = rng.choices(range(len(pool)), weights=weights)[0]
        chosen.append(pool.pop(index))
        weights.pop(index)
    return chosen


def _num_parents(rng: random.Random, parents_mean: float, entity_share: float) -> int:
    # The paper's plain Poisson(1.5) would leave 22 % of the nodes parentless (names); the
    # official graphs have 2.5 names in 23 nodes, so a node is an entity with probability
    # `entity_share` and otherwise draws a zero-truncated Poisson number of parents.
    if rng.random() < entity_share:
        return 0
    while True:
        k = _poisson(rng, parents_mean)
        if k > 0:
            return k


def grow_dag(rng: random.Random, num_nodes: int, parents_mean: float, entity_share: float) -> Graph:
    """Grow a DAG of `num_nodes` nodes from seeds 0 and 1 (Coconut, Appendix A.2)."""
    parents: list[list[int]] = [[], []]
    labels, depths = [1, 2], [0, 0]
    for _ in range(2, num_nodes):
        draw = rng.random()
        allowed = {0, 1} if draw < P_FROM_SEED0_SIDE else \
            {0, 2} if draw < P_FROM_SEED0_SIDE + P_FROM_SEED1_SIDE else {0, 1, 2, 3}
        pool = [node for node, label in enumerate(labels) if label in allowed]
        chosen = _weighted_sample(rng, pool, [depths[node] * DEPTH_WEIGHT + 1 for node in pool],
                                  _num_parents(rng, parents_mean, entity_share))
        parents.append(chosen)
        labels.append(_or_labels(labels, chosen))
        depths.append(1 + max((depths[p] for p in chosen), default=-1))
    return Graph(parents, labels)


def _or_labels(labels: list[int], nodes: list[int]) -> int:
    label = 0
    for node in nodes:
        label |= labels[node]
    return label


def distances(children: list[list[int]], source: int) -> dict[int, int]:
    """Shortest distance (in edges) from `source` to every node it reaches."""
    dist, queue = {source: 0}, deque([source])
    while queue:
        node = queue.popleft()
        for child in children[node]:
            if child not in dist:
                dist[child] = dist[node] + 1
                queue.append(child)
    return dist


def shortest_path_counts(parents: list[list[int]], dist: dict[int, int]) -> dict[int, int]:
    """How many shortest paths lead from the source of `dist` to each node it reaches."""
    counts: dict[int, int] = {}
    for node in sorted(dist, key=dist.get):  # by distance, so parents are counted first
        counts[node] = 1 if dist[node] == 0 else sum(
            counts[p] for p in parents[node] if dist.get(p) == dist[node] - 1)
    return counts


def sample_shortest_path(rng: random.Random, parents: list[list[int]], dist: dict[int, int],
                         target: int) -> list[int]:
    """A uniformly drawn shortest path ending at `target` (walked backwards by path counts)."""
    counts = shortest_path_counts(parents, dist)
    path = [target]
    while dist[path[-1]] > 0:
        previous = [p for p in parents[path[-1]] if dist.get(p) == dist[path[-1]] - 1]
        path.append(rng.choices(previous, weights=[counts[p] for p in previous])[0])
    return path[::-1]


@dataclass(frozen=True)
class Question:
    """The entity asked about, the right and the wrong option, as node ids."""

    root: int
    target: int
    neg_target: int


def choose_question(rng: random.Random, graph: Graph, min_steps: int, max_steps: int,
                    same_depth: bool = False) -> Question | None:
    """Pick root, target and wrong option as the official data does, or None if the graph has none.

    `same_depth` draws the wrong option among the other person's leaves at the right option's
    distance only (None if there is none). Official graphs do not need it; in small graphs the
    wrong option is otherwise often one step from its person ("Bob is a quimpus."), a cue
    that answers the question without following the path.
    """
    children = graph.children()
    reach = [distances(children, 0), distances(children, 1)]
    # A seed with no children is a leaf of its own reach, but a person's name is never an
    # option in the official data (0 of 300 valid questions); small graphs made it one in
    # 45 % of questions, a shortcut a model can answer without reasoning. Options are concepts.
    leaves = [[n for n in reach[s] if not children[n] and n not in reach[1 - s] and reach[s][n] > 0]
              for s in (0, 1)]
    if not leaves[0] or not leaves[1]:
        return None
    farthest = [max(reach[s][n] for n in leaves[s]) for s in (0, 1)]
    root = rng.randrange(2) if farthest[0] == farthest[1] else int(farthest[1] > farthest[0])
    steps = farthest[root]
    if not min_steps <= steps <= max_steps:
        return None
    target = rng.choice([n for n in leaves[root] if reach[root][n] == steps])
    wrong = [n for n in leaves[1 - root] if not same_depth or reach[1 - root][n] == steps]
    if not wrong:
        return None
    return Question(root, target, rng.choice(wrong))


def fits_lexicon(graph: Graph) -> bool:
    """Whether the official lexicon has enough names and concepts for this graph."""
    entities = sum(1 for parents in graph.parents if not parents)
    return entities <= len(PROSQA_NAMES) and graph.size - entities <= len(PROSQA_CONCEPTS)


def name_nodes(rng: random.Random, graph: Graph) -> list[str]:
    """Person names for parentless nodes, distinct "…pus" concepts for the others."""
    entities = [n for n in range(graph.size) if not graph.parents[n]]
    if len(entities) > len(PROSQA_NAMES) or graph.size - len(entities) > len(PROSQA_CONCEPTS):
        raise ConfigError(f"prosqa: a graph of {graph.size} nodes needs more words than the official "
                          f"lexicon has ({len(PROSQA_NAMES)} names, {len(PROSQA_CONCEPTS)} concepts)")
    names = iter(rng.sample(PROSQA_NAMES, len(entities)))
    concepts = iter(rng.sample(PROSQA_CONCEPTS, graph.size - len(entities)))
    return [next(names) if not graph.parents[n] else next(concepts) for n in range(graph.size)]


def edge_sentence(symbols: list[str], parent: int, child: int) -> str:
    """ "Tom is a terpus." for an entity, "Every terpus is a brimpus." for a concept."""
    subject = symbols[parent]
    if subject[:1].isupper():
        return f"{subject} is a {symbols[child]}."
    return f"Every {subject} is a {symbols[child]}."


def render(rng: random.Random, graph: Graph, question: Question) -> Example:
    """The question text (shuffled edge sentences), the shortest-path trace and the record metadata."""
    symbols = name_nodes(rng, graph)
    edges = [[parent, child] for child in range(graph.size) for parent in graph.parents[child]]
    sentences = [edge_sentence(symbols, parent, child) for parent, child in edges]
    rng.shuffle(sentences)
    options = [symbols[question.target], symbols[question.neg_target]]
    rng.shuffle(options)
    entity = symbols[question.root]
    text = " ".join(sentences + [f"Is {entity} a {options[0]} or {options[1]}?"])
    dist = distances(graph.children(), question.root)
    path = sample_shortest_path(rng, graph.parents, dist, question.target)
    steps = [edge_sentence(symbols, a, b) for a, b in zip(path, path[1:])]
    meta = {"idx_to_symbol": symbols, "edges": edges, "root": question.root,
            "target": question.target, "neg_target": question.neg_target}
    return Example(question=text, steps=steps, answer=f"{entity} is a {symbols[question.target]}.", meta=meta)


class ProsQA(Task):
    """ProsQA (Coconut, Hao et al. 2024): which of two concepts does an entity belong to."""

    name = "prosqa"
    answer_rule = "exact match (the right option named, the wrong one not)"

    # --- generation ----------------------------------------------------------------
    def generator_options(self) -> dict[str, tuple[type, Any, str]]:
        return {
            "nodes": (float, 22.7, "mean node count of a drawn graph (22.7 gives the official 22.8 after filtering)"),
            "nodes_sd": (float, 2.0, "standard deviation of the node count"),
            "parents_mean": (float, 1.5, "mean of the Poisson number of parents of a new node"),
            "entity_share": (float, 0.025, "probability that a new node has no parents (a name)"),
            "min_steps": (int, 3, "shortest allowed answer path, in steps (official: 3)"),
            "max_steps": (int, 6, "longest allowed answer path, in steps (official: 6)"),
            "same_depth": (bool, False, "wrong option as many steps from its person as the right one "
                                        "(small graphs: removes a shortcut; official: off)"),
        }

    def generate(self, n: int, seed: int, nodes: float = 22.7, nodes_sd: float = 2.0,
                 parents_mean: float = 1.5, entity_share: float = 0.025, min_steps: int = 3,
                 max_steps: int = 6, same_depth: bool = False) -> list[Example]:
        if not all(map(math.isfinite, (nodes, nodes_sd, parents_mean, entity_share))) or nodes < 4 \
                or nodes_sd < 0 or parents_mean <= 0 or not 0 <= entity_share < 1 or not 1 <= min_steps <= max_steps:
            raise ConfigError("prosqa: need nodes >= 4, nodes_sd >= 0, parents_mean > 0, 0 <= entity_share < 1 "
                              f"and 1 <= min_steps <= max_steps (got {nodes}, {nodes_sd}, {parents_mean}, "
                              f"{entity_share}, {min_steps}, {max_steps})")
        if nodes_sd > LEXICON_NODES:  # a spread of 1e9 would grow graphs of a billion nodes before any check
            raise ConfigError(f"prosqa: --nodes-sd {nodes_sd:g} exceeds {LEXICON_NODES}: the lexicon names at most "
                              f"{LEXICON_NODES} nodes, so wider spreads only draw graphs that cannot be used")
        if nodes > LEXICON_NODES:  # known before drawing anything: refuse at once, not after minutes
            raise ConfigError(f"prosqa: --nodes {nodes:g} exceeds the official lexicon: a graph names at most "
                              f"{LEXICON_NODES} nodes ({len(PROSQA_NAMES)} names, {len(PROSQA_CONCEPTS)} concepts)")
        rng = random.Random(seed)
        return [self._generate_one(rng, nodes, nodes_sd, parents_mean, entity_share, min_steps, max_steps,
                                   same_depth) for _ in progress(range(n), "prosqa")]

    @staticmethod
    def _generate_one(rng: random.Random, nodes: float, nodes_sd: float, parents_mean: float,
                      entity_share: float, min_steps: int, max_steps: int, same_depth: bool) -> Example:
        # Rejection sampling: draw graphs until one has a question within the step bounds.
        for _ in range(MAX_TRIES):
            size = max(4, round(rng.gauss(nodes, nodes_sd)))
            graph = grow_dag(rng, size, parents_mean, entity_share)
            question = choose_question(rng, graph, min_steps, max_steps, same_depth)
            # A graph the lexicon cannot name is drawn again, like one without a question.
            if question is not None and fits_lexicon(graph):
                return render(rng, graph, question)
        raise ConfigError(f"prosqa: no graph with a {min_steps}-{max_steps} step question that the lexicon can "
                          f"name in {MAX_TRIES} tries; allow more steps, or change the number of nodes")

    def lexicon(self) -> list[str]:
        return ["Every", "is", "a", "Is", "or", ".", "?"] + list(PROSQA_NAMES) + list(PROSQA_CONCEPTS)

    # --- loading -----------------------------------------------------------------------
    def load(self, path: str | Path) -> list[Example]:
        """Examples in the Coconut schema; a record's graph (when it has one) is checked too."""
        examples = []
        for line, record in read_records(path):
            example = Example.from_dict(record, path=path, line=line)
            check_graph(example.meta, path, line)
            examples.append(example)
        return examples

    # --- checking --------------------------------------------------------------------
    def verify(self, example: Example, generated: str) -> Verdict:
        """Right when the answer names the right option and not the wrong one ("Tom is a lempus.")."""
        predicted = extract_solution(generated)
        if predicted is None:
            return Verdict(False, None)
        right, wrong = options_of(example)
        words = set(re.findall(r"\w+", predicted.lower()))
        return Verdict(right.lower() in words and wrong.lower() not in words, predicted)

    def trace_is_shortest_path(self, example: Example, steps: list[str] | None = None) -> bool:
        """Whether `steps` (default: the example's own) walk graph edges from the root to the
        right option in the fewest possible steps."""
        symbols, edges = example.meta["idx_to_symbol"], {tuple(e) for e in example.meta["edges"]}
        path = path_of_steps(symbols, example.meta["root"], example.steps if steps is None else steps)
        if path is None or path[-1] != example.meta["target"]:
            return False
        if not all((a, b) in edges for a, b in zip(path, path[1:])):
            return False
        return len(path) - 1 == shortest_distance(example, example.meta["target"])

    @staticmethod
    def looks_like(record: dict[str, Any]) -> bool:
        if "idx_to_symbol" in record and "edges" in record:
            return True
        question = record.get("question")
        return isinstance(question, str) and QUESTION_RE.search(question) is not None

    def stats(self, examples: list[Example]) -> dict[str, Any]:
        """Graph sizes, right-option-first share and trace validity (as in Coconut's Table 5)."""
        first = [_right_option_first(e) for e in examples]
        figures: dict[str, Any] = {"right_option_first_share": sum(first) / len(first) if first else 0.0}
        graphs = [e for e in examples if "idx_to_symbol" in e.meta and "edges" in e.meta]
        if graphs:
            nodes = [len(e.meta["idx_to_symbol"]) for e in graphs]
            edges = [len(e.meta["edges"]) for e in graphs]
            figures.update(
                nodes_mean=statistics.fmean(nodes), nodes_sd=statistics.pstdev(nodes),
                edges_mean=statistics.fmean(edges), edges_sd=statistics.pstdev(edges),
                shortest_path_mean=statistics.fmean(shortest_distance(e, e.meta["target"]) for e in graphs),
                shortest_paths_per_question=statistics.fmean(map(count_shortest_paths, graphs)),
                trace_is_shortest_path_share=sum(map(self.trace_is_shortest_path, graphs)) / len(graphs),
            )
        return figures


GRAPH_FIELDS = ("idx_to_symbol", "edges", "root", "target", "neg_target")


def check_graph(meta: dict[str, Any], path: str | Path | None = None, line: int | None = None) -> None:
    """Refuse a record's graph metadata unless every field is well formed and every node exists.

    Records without a graph (question text only) are fine; one field of it needs them all,
    since `stats` and `trace_is_shortest_path` walk the graph from root to target.
    """
    if not any(name in meta for name in GRAPH_FIELDS):
        return
    for name in GRAPH_FIELDS:
        if name not in meta:
            raise DataError(path, "missing graph field", line=line, field=name)
    symbols = meta["idx_to_symbol"]
    if not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) and s for s in symbols):
        raise DataError(path, "must be a non-empty list of names", line=line, field="idx_to_symbol")

    def node(value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(symbols):
            raise DataError(path, f"must be a node index in 0..{len(symbols) - 1}, got {value!r:.40}",
                            line=line, field=field)
        return value

    edges = meta["edges"]
    if not isinstance(edges, list) or not all(isinstance(e, list) and len(e) == 2 for e in edges):
        raise DataError(path, "must be a list of [parent, child] pairs", line=line, field="edges")
    for edge in edges:
        for value in edge:
            node(value, "edges")
    for name in ("root", "target", "neg_target"):
        node(meta[name], name)


def options_of(example: Example) -> tuple[str, str]:
    """(right option, wrong option) of a question "Is E a A or B?"."""
    match = QUESTION_RE.search(example.question)
    right = example.answer.strip().rstrip(".").split()[-1]
    if match is None:
        return right, ""
    first, second = match.group(2), match.group(3)
    return right, second if first == right else first


def _right_option_first(example: Example) -> bool:
    match = QUESTION_RE.search(example.question)
    return match is not None and match.group(2) == options_of(example)[0]


def path_of_steps(symbols: list[str], root: int, steps: list[str]) -> list[int] | None:
    """The node ids a trace walks through, or None if a step does not continue the walk."""
    index = {symbol: i for i, symbol in enumerate(symbols)}
    path = [root]
    for step in steps:
        match = re.fullmatch(r"\s*(?:Every )?(\w+) is an? (\w+)\.?\s*", step)
        if match is None or index.get(match.group(1)) != path[-1] or match.group(2) not in index:
            return None
        path.append(index[match.group(2)])
    return path


def _graph_of(example: Example) -> tuple[list[list[int]], dict[int, int]]:
    """Parents of each node and distances from the root, from a record's metadata."""
    parents: list[list[int]] = [[] for _ in example.meta["idx_to_symbol"]]
    children: list[list[int]] = [[] for _ in example.meta["idx_to_symbol"]]
    for parent, child in example.meta["edges"]:
        parents[child].append(parent)
        children[parent].append(child)
    return parents, distances(children, example.meta["root"])


def shortest_distance(example: Example, node: int) -> int | None:
    """Edges on a shortest path from the example's root to `node` (None if unreachable)."""
    return _graph_of(example)[1].get(node)


def count_shortest_paths(example: Example) -> int:
    """Number of shortest paths from the root to the right option (official mean: 1.6)."""
    parents, dist = _graph_of(example)
    return shortest_path_counts(parents, dist).get(example.meta["target"], 0)
