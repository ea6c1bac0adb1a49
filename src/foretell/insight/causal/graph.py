"""Causal graphs from DOT or YAML files, and identification: which adjustment set (or which
instrument) makes the effect estimable from the observed columns, or why nothing does.

Identification is dowhy's (backdoor, instrumental-variable and front-door criteria). The
graph files are read here: the DOT subset a causal graph needs (``digraph { A -> B -> C;
U [observed="no"]; X -> {T Y} }``, subgraphs, comments) is small, and pydot, the parser
behind networkx and dowhy, is an undeclared dependency that floods deprecation warnings
under pyparsing 3.3.

A YAML graph maps each cause to its effects, and may name unobserved nodes::

    edges:
      X1: [T, Y]
      U: [T, Y]
      T: Y
    unobserved: [U]

A node that is not a column of the data is unobserved too, and the identification says so.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from foretell.errors import UserError

Strategy = Literal["backdoor", "iv", "assumed", "none"]


@dataclass(frozen=True)
class CausalGraph:
    """Directed edges cause -> effect, and the nodes no column measures."""

    edges: tuple[tuple[str, str], ...]
    unobserved: frozenset[str] = frozenset()
    isolated: tuple[str, ...] = ()

    @property
    def nodes(self) -> list[str]:
        seen: dict[str, None] = {}
        for a, b in self.edges:
            seen.setdefault(a)
            seen.setdefault(b)
        for node in (*self.isolated, *sorted(self.unobserved)):
            seen.setdefault(node)
        return list(seen)


@dataclass(frozen=True)
class Identification:
    """How the effect is identified: the adjustment set or instruments used, or why not."""

    identifiable: bool
    strategy: Strategy
    adjustment: tuple[str, ...] = ()
    instruments: tuple[str, ...] = ()
    unobserved: tuple[str, ...] = field(default=())
    explanation: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "identifiable": self.identifiable,
            "strategy": self.strategy,
            "adjustment_set": list(self.adjustment),
            "instruments": list(self.instruments),
            "unobserved": list(self.unobserved),
            "explanation": self.explanation,
        }


def assumed(confounders: Sequence[str], instrument: str | None) -> Identification:
    """The identification a confounder list stands for: the user vouches for it."""
    if confounders:
        text = (
            f"adjusting for the confounders given ({', '.join(confounders)}), assumed to include "
            "every common cause of treatment and outcome (no unmeasured confounding)"
        )
    else:
        text = (
            "no confounders given: the difference in means is causal only if the treatment was "
            "randomized"
        )
    if instrument:
        text += f"; {instrument!r} is assumed a valid instrument"
    return Identification(
        True, "assumed", tuple(confounders), (instrument,) if instrument else (), (), text
    )


def read_graph(path: str | Path) -> CausalGraph:
    """Reads a DOT (``.dot``, ``.gv``) or YAML (``.yaml``, ``.yml``) causal graph."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"graph file '{path}' does not exist") from None
    except OSError as exc:
        raise UserError(f"graph file '{path}' cannot be read: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return parse_yaml(text, str(path))
    if path.suffix.lower() in (".dot", ".gv") or text.lstrip().startswith(("digraph", "strict")):
        return parse_dot(text, str(path))
    raise UserError(
        f"graph file '{path}' must be DOT (.dot, .gv) or YAML (.yaml, .yml); got '{path.suffix}'"
    )


def parse_yaml(text: str, where: str = "graph") -> CausalGraph:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not valid YAML: {exc}") from None
    edges = data.get("edges") if isinstance(data, dict) else None
    if not isinstance(edges, dict) or not edges:
        raise UserError(
            f"{where}: a YAML graph needs 'edges', a mapping of each cause to its effects "
            "(e.g. 'X1: [T, Y]'); got " + (repr(type(edges).__name__) if data else "nothing")
        )
    pairs: list[tuple[str, str]] = []
    for cause, effects in edges.items():
        targets = effects if isinstance(effects, list) else [effects]
        pairs.extend((str(cause), str(e)) for e in targets if e is not None)
    unobserved = data.get("unobserved") or []
    if not isinstance(unobserved, list):
        raise UserError(f"{where}: 'unobserved' must be a list of node names")
    return CausalGraph(tuple(pairs), frozenset(map(str, unobserved)))


_TOKEN = re.compile(
    r"""\s+|//[^\n]*|/\*.*?\*/|\#[^\n]*
    |(?P<string>"(?:\\.|[^"\\])*")
    |(?P<op>->|--|[{}\[\];,=:])
    |(?P<id>[A-Za-z_\x80-\uffff][\w\x80-\uffff]*|-?(?:\.\d+|\d+(?:\.\d*)?))""",
    re.S | re.X,
)
_KEYWORDS = {"graph", "node", "edge"}


def parse_dot(text: str, where: str = "graph") -> CausalGraph:
    """The edges and unobserved nodes (``observed="no"``) of a DOT digraph."""
    return _DotParser(_tokens(text, where), where).graph()


def _tokens(text: str, where: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            line = text.count("\n", 0, position) + 1
            raise UserError(f"{where}: line {line}: cannot read {text[position : position + 20]!r}")
        position = match.end()
        if match.group("string") is not None:
            tokens.append(("id", match.group("string")[1:-1].replace('\\"', '"')))
        elif match.group("op") is not None:
            tokens.append(("op", match.group("op")))
        elif match.group("id") is not None:
            tokens.append(("id", match.group("id")))
    return tokens


class _DotParser:
    """Recursive descent over DOT's statement grammar, keeping nodes, edges and attributes."""

    def __init__(self, tokens: list[tuple[str, str]], where: str) -> None:
        self.tokens, self.at, self.where = tokens, 0, where
        self.edges: list[tuple[str, str]] = []
        self.nodes: dict[str, dict[str, str]] = {}

    def graph(self) -> CausalGraph:
        if self._peek() == "strict":
            self.at += 1
        kind = self._next()
        if kind != "digraph":
            raise UserError(
                f"{self.where}: a causal graph must be a 'digraph' (directed); got {kind!r}"
            )
        if self._peek() != "{":
            self.at += 1  # the graph's name
        self._block()
        unobserved = {
            n for n, attrs in self.nodes.items() if attrs.get("observed", "yes") in ("no", "false")
        }
        linked = {n for e in self.edges for n in e}
        isolated = tuple(n for n in self.nodes if n not in linked)
        return CausalGraph(tuple(dict.fromkeys(self.edges)), frozenset(unobserved), isolated)

    def _block(self) -> list[str]:
        """Parses ``{ statements }``; returns the nodes it mentions (an edge end may be one)."""
        self._expect("{")
        mentioned: list[str] = []
        while self._peek() != "}":
            if self._peek() is None:
                raise UserError(f"{self.where}: the graph ends before its closing '}}'")
            mentioned.extend(self._statement())
            if self._peek() in (";", ","):
                self.at += 1
        self.at += 1
        return mentioned

    def _statement(self) -> list[str]:
        word = self._peek()
        if word in _KEYWORDS:
            self.at += 1
            self._attributes()
            return []
        if self.at + 1 < len(self.tokens) and self.tokens[self.at + 1] == ("op", "="):
            self.at += 3  # a graph attribute: name = value
            return []
        group = self._operand()
        mentioned = list(group)
        while self._peek() in ("->", "--"):
            if self._next() == "--":
                raise UserError(f"{self.where}: '--' is an undirected edge; use '->'")
            target = self._operand()
            self.edges.extend((a, b) for a in group for b in target if a != b)
            mentioned.extend(target)
            group = target
        attributes = self._attributes()
        if len(mentioned) == len(group) == 1 and mentioned == group:
            self.nodes[group[0]].update(attributes)
        return mentioned

    def _operand(self) -> list[str]:
        if self._peek() == "subgraph":
            self.at += 1
            if self._peek() != "{":
                self.at += 1
        if self._peek() == "{":
            return self._block()
        kind, name = self.tokens[self.at] if self.at < len(self.tokens) else ("op", "")
        if kind != "id":
            raise UserError(f"{self.where}: expected a node name; got {name!r}")
        self.at += 1
        if self._peek() == ":":  # a port, meaningless here
            self.at += 2
        self.nodes.setdefault(name, {})
        return [name]

    def _attributes(self) -> dict[str, str]:
        found: dict[str, str] = {}
        while self._peek() == "[":
            self.at += 1
            while self._peek() != "]":
                key = self._next()
                if self._peek() == "=":
                    self.at += 1
                    found[key] = self._next().lower()
                if self._peek() in (",", ";"):
                    self.at += 1
            self.at += 1
        return found

    def _peek(self) -> str | None:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else None

    def _next(self) -> str:
        if self.at >= len(self.tokens):
            raise UserError(f"{self.where}: the graph ends unexpectedly")
        self.at += 1
        return self.tokens[self.at - 1][1]

    def _expect(self, token: str) -> None:
        got = self._next()
        if got != token:
            raise UserError(f"{self.where}: expected {token!r}; got {got!r}")


def identify(
    graph: CausalGraph, treatment: str, outcome: str, columns: Iterable[str]
) -> Identification:
    """Identifies the effect of ``treatment`` on ``outcome`` from the observed ``columns``."""
    import networkx as nx  # type: ignore[import-untyped]

    from foretell.insight.causal.methods import require_extra

    require_extra("dowhy", "identification from a causal graph")
    from dowhy import CausalModel  # type: ignore[import-untyped]

    nodes = graph.nodes
    for role, name in (("treatment", treatment), ("outcome", outcome)):
        if name not in nodes:
            raise UserError(
                f"the graph has no node for the {role} {name!r}; its nodes: {', '.join(nodes)}"
            )
    dag = nx.DiGraph(graph.edges)
    dag.add_nodes_from(nodes)
    if not nx.is_directed_acyclic_graph(dag):
        cycle = " -> ".join(a for a, _ in nx.find_cycle(dag))
        raise UserError(f"the graph has a cycle ({cycle}); a causal graph must be acyclic")
    present = set(columns)
    unobserved = sorted(graph.unobserved | {n for n in nodes if n not in present})
    for role, name in (("treatment", treatment), ("outcome", outcome)):
        if name in unobserved:
            raise UserError(f"the {role} {name!r} must be an observed column of the data")
    for node in unobserved:
        dag.nodes[node]["observed"] = "no"
    observed = [n for n in nodes if n not in unobserved]
    frame = pd.DataFrame(np.zeros((2, len(observed))), columns=observed)
    with warnings.catch_warnings():
        # dowhy warns that nodes missing from the data are taken as unobserved: we say so
        warnings.filterwarnings("ignore", message=".*assumed unobserved")
        model = CausalModel(data=frame, treatment=treatment, outcome=outcome, graph=dag)
        found = model.identify_effect(proceed_when_unidentifiable=False)
    order = {n: i for i, n in enumerate(nodes)}
    confounding = [u for u in unobserved if _confounds(dag, u, treatment, outcome)]
    hidden = f" (unobserved: {', '.join(unobserved)})" if unobserved else ""
    instruments = tuple(found.instrumental_variables or ()) if found.estimands.get("iv") else ()
    if found.estimands.get("backdoor") is not None:
        adjustment = tuple(sorted(found.get_backdoor_variables(), key=order.__getitem__))
        text = (
            f"identified by the backdoor criterion: adjusting for {', '.join(adjustment)} blocks "
            f"every backdoor path from {treatment} to {outcome}"
            if adjustment
            else f"identified without adjustment: nothing in the graph confounds {treatment} "
            f"and {outcome}"
        )
        return Identification(
            True, "backdoor", adjustment, instruments, tuple(unobserved), text + hidden
        )
    blocked = (
        f"no set of observed variables blocks the backdoor paths from {treatment} to {outcome} "
        f"(through the unobserved {', '.join(confounding or unobserved)})"
    )
    if instruments:
        text = f"{blocked}; the instrument {', '.join(instruments)} identifies the effect (2SLS)"
        return Identification(True, "iv", (), instruments, tuple(unobserved), text)
    text = f"not identifiable: {blocked}, and the graph has no instrument"
    if found.estimands.get("frontdoor") is not None:
        mediators = ", ".join(found.frontdoor_variables or ())
        text += (
            f" (it is identifiable by the front-door criterion through {mediators}, which "
            "foretell does not estimate)"
        )
    return Identification(False, "none", (), (), tuple(unobserved), text)


def _confounds(dag: Any, node: str, treatment: str, outcome: str) -> bool:
    import networkx as nx

    return bool(
        nx.has_path(dag, node, treatment)
        and nx.has_path(dag.subgraph(n for n in dag if n != treatment), node, outcome)
    )
