"""The public surface: everything in ``foretell.__all__`` exists, and nothing else is promised."""

from __future__ import annotations

import foretell


def test_all_names_exist_and_are_sorted() -> None:
    assert all(hasattr(foretell, name) for name in foretell.__all__)
    assert list(foretell.__all__) == sorted(foretell.__all__)


def test_public_names_are_all_listed() -> None:
    public = {
        name
        for name, value in vars(foretell).items()
        if not name.startswith("_")
        and not getattr(value, "__name__", "").startswith("foretell.")
        and name not in ("annotations", "Path")
    }
    assert public <= set(foretell.__all__)
