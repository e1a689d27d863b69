"""ProntoQA: true/false questions over a fictional ontology, and a generator for them.

One generated 5-hop example (sentences shortened here; the real question has 23 rules):

    question: "Tumpuses are floral. Each jompus is not melodic. Tumpuses are gorpuses. ...
               Alex is a tumpus. Alex is a jompus. True or false: Alex is happy."
    steps:    ["Alex is a tumpus. Tumpuses are gorpuses.", ..., "Alex is happy."]
    answer:   "True"

The ontology has the shape every official example has (measured on the 9,000 official
train questions): a chain of `hops` concepts c_0 → … → c_{h-1} that the entity belongs to,
the last one carrying the asked property; every chain concept has one property and one
extra parent (the last one two), five of those parents a property of their own; a second
concept the entity belongs to, with one parent and one property; and one unrelated
concept with the asked property of the opposite sign. The rules are shuffled; the two
facts about the entity and the query close the question. The trace is h + 1 steps: h
pairs "E is a c_i. <rule>" and the conclusion. The official files load unchanged (Coconut
schema).
"""

from __future__ import annotations

import random
import re
import statistics
from dataclasses import dataclass
from typing import Any

from ...core.errors import ConfigError
from ..schema import Example
from .base import Task, Verdict, extract_solution, progress
from .lexicon import PRONTOQA_CONCEPTS, PRONTOQA_NAMES, PRONTOQA_PROPERTY_FAMILIES, article, plural

# Negation rates of the official train split, by where the property sits in the ontology.
P_NOT_CHAIN = 0.27  # properties of c_0 … c_{h-2}
P_NOT_ASKED = 0.47  # the asked property on c_{h-1}
P_NOT_OTHER = 0.33  # properties of side concepts
# Sentence forms: half "Xs are Ys.", a quarter each "Every x is a y." / "Each x is a y.".
P_PLURAL_FORM = 0.5
QUERY_PREFIX = "True or false:"


@dataclass(frozen=True)
class Rule:
    """`subject` is a `obj` (concept) or has property `obj` (possibly negated)."""

    subject: str
    obj: str
    is_concept: bool
    negated: bool = False

    def render(self, rng: random.Random) -> str:
        not_ = "not " if self.negated else ""
        form = rng.random()
        if form < P_PLURAL_FORM:
            obj = plural(self.obj) if self.is_concept else self.obj
            return f"{plural(self.subject).capitalize()} are {not_}{obj}."
        quantifier = "Every" if form < P_PLURAL_FORM + (1 - P_PLURAL_FORM) / 2 else "Each"
        obj = f"{article(self.obj)} {self.obj}" if self.is_concept else self.obj
        return f"{quantifier} {self.subject} is {not_}{obj}."


def _entity_fact(name: str, concept: str) -> str:
    return f"{name} is {article(concept)} {concept}."


def _concepts_needed(hops: int, distractors: bool) -> int:
    # chain + (hops + 1) extra parents + second concept, its parent, the opposite-sign concept
    return hops + (hops + 4 if distractors else 0)


def _properties_needed(hops: int, distractors: bool) -> int:
    # chain properties + hops side parents with a property + the second concept's property
    return hops + (hops + 1 if distractors else 0)


class ProntoQA(Task):
    """ProntoQA (Saparov & He 2023) in Coconut's 5-hop version with distractors."""

    name = "prontoqa"
    answer_rule = "exact match (True / False)"

    # --- generation ----------------------------------------------------------------
    def generator_options(self) -> dict[str, tuple[type, Any, str]]:
        return {
            "hops": (int, 5, "reasoning hops (official: 5); the trace has hops + 1 steps"),
            "distractors": (bool, True, "add the official distractor rules (side parents, a second "
                                        "concept, the asked property with the opposite sign)"),
        }

    def generate(self, n: int, seed: int, hops: int = 5, distractors: bool = True) -> list[Example]:
        self._check_options(hops, distractors)
        rng = random.Random(seed)
        return [self._generate_one(rng, hops, distractors) for _ in progress(range(n), "prontoqa")]

    @staticmethod
    def _check_options(hops: int, distractors: bool) -> None:
        if hops < 1:
            raise ConfigError(f"prontoqa: hops must be at least 1, got {hops}")
        if _concepts_needed(hops, distractors) > len(PRONTOQA_CONCEPTS) or \
                _properties_needed(hops, distractors) > len(PRONTOQA_PROPERTY_FAMILIES):
            limit = max(h for h in range(1, 20) if _concepts_needed(h, distractors) <= len(PRONTOQA_CONCEPTS)
                        and _properties_needed(h, distractors) <= len(PRONTOQA_PROPERTY_FAMILIES))
            raise ConfigError(f"prontoqa: hops={hops} needs more words than the official lexicon has "
                              f"(at most {limit} with distractors={distractors})")

    def _generate_one(self, rng: random.Random, hops: int, distractors: bool) -> Example:
        name = rng.choice(PRONTOQA_NAMES)
        concepts = rng.sample(PRONTOQA_CONCEPTS, _concepts_needed(hops, distractors))
        # One property per family, so no inherited property contradicts another.
        families = rng.sample(PRONTOQA_PROPERTY_FAMILIES, _properties_needed(hops, distractors))
        properties = [rng.choice(family) for family in families]
        chain, side = concepts[:hops], concepts[hops:]
        asked = properties[hops - 1]

        chain_rules = [Rule(chain[i], chain[i + 1], True) for i in range(hops - 1)]
        asked_rule = Rule(chain[-1], asked, False, rng.random() < P_NOT_ASKED)
        rules = chain_rules + [asked_rule]
        entity_facts = [_entity_fact(name, chain[0])]
        if distractors:
            rules += self._distractor_rules(rng, chain, side, properties, asked_rule)
            entity_facts.append(_entity_fact(name, side[hops + 1]))
            rng.shuffle(entity_facts)

        sentences = {id(rule): rule.render(rng) for rule in rules}
        order = list(rules)
        rng.shuffle(order)
        query_negated = rng.random() < 0.5
        query = f"{QUERY_PREFIX} {name} is {'not ' if query_negated else ''}{asked}."
        question = " ".join([sentences[id(r)] for r in order] + entity_facts + [query])

        steps = [f"{_entity_fact(name, rule.subject)} {sentences[id(rule)]}" for rule in rules[:hops]]
        steps.append(f"{name} is {'not ' if asked_rule.negated else ''}{asked}.")
        answer = "True" if query_negated == asked_rule.negated else "False"
        return Example(question=question, steps=steps, answer=answer)

    @staticmethod
    def _distractor_rules(rng: random.Random, chain: list[str], side: list[str], properties: list[str],
                          asked_rule: Rule) -> list[Rule]:
        hops = len(chain)
        parents, second, second_parent, opposite = side[:hops + 1], side[hops + 1], side[hops + 2], side[hops + 3]
        side_properties = properties[hops:]
        rules = [Rule(chain[i], properties[i], False, rng.random() < P_NOT_CHAIN) for i in range(hops - 1)]
        # Each chain concept gets one extra parent, the last one two; all but that last have a property.
        rules += [Rule(concept, parent, True) for concept, parent in zip(chain + chain[-1:], parents)]
        rules += [Rule(parent, prop, False, rng.random() < P_NOT_OTHER)
                  for parent, prop in zip(parents[:hops], side_properties[:hops])]
        rules += [Rule(second, second_parent, True),
                  Rule(second, side_properties[hops], False, rng.random() < P_NOT_OTHER),
                  Rule(opposite, asked_rule.obj, False, not asked_rule.negated)]
        return rules

    def lexicon(self) -> list[str]:
        words = ["Every", "Each", "is", "are", "a", "an", "not", "True", "or", "false", "False", ".", ":"]
        words += list(PRONTOQA_NAMES) + [p for family in PRONTOQA_PROPERTY_FAMILIES for p in family]
        for concept in PRONTOQA_CONCEPTS:
            words += [concept, plural(concept), plural(concept).capitalize()]
        return words

    # --- checking --------------------------------------------------------------------
    def verify(self, example: Example, generated: str) -> Verdict:
        predicted = extract_solution(generated)
        if predicted is None:
            return Verdict(False, None)
        parsed = parse_truth(predicted)
        return Verdict(parsed is not None and parsed == parse_truth(example.answer), parsed)

    @staticmethod
    def looks_like(record: dict[str, Any]) -> bool:
        question = record.get("question")
        return isinstance(question, str) and QUERY_PREFIX in question

    def stats(self, examples: list[Example]) -> dict[str, Any]:
        sentences = [len(re.findall(r"[.?]", e.question.split(QUERY_PREFIX)[0])) for e in examples]
        negated = [" not " in e.question.rsplit(QUERY_PREFIX, 1)[-1] for e in examples]
        return {
            "answer_true_share": _share([parse_truth(e.answer) == "True" for e in examples]),
            "query_negated_share": _share(negated),
            "sentences_before_query_mean": statistics.fmean(sentences) if sentences else 0.0,
        }


def parse_truth(text: str) -> str | None:
    """"True" or "False" from an answer such as " true." or "False"; None otherwise."""
    word = re.sub(r"[^a-z]", "", text.strip().lower())
    return {"true": "True", "false": "False"}.get(word)


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0
