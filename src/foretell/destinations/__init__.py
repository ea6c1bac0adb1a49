"""Data destinations: where results go."""

from foretell.destinations.files import write_results

__all__ = ["write_results"]
