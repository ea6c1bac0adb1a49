"""Example models of every task kind, trained on data that works offline."""

from foretell.examples.build import EXAMPLES, build_examples

__all__ = ["EXAMPLES", "build_examples"]
