"""Example data that works offline: scikit-learn's bundled sets and seeded generated ones."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

MERCHANT_CATEGORIES = [
    "grocery",
    "fuel",
    "restaurants",
    "electronics",
    "travel",
    "online_gaming",
    "jewellery",
]
#: The true fraud rate of each merchant category in :func:`merchant_outcomes`, and how often
#: each category occurs.
FRAUD_RATES = {
    "grocery": 0.002,
    "fuel": 0.004,
    "restaurants": 0.003,
    "electronics": 0.015,
    "travel": 0.01,
    "online_gaming": 0.06,
    "jewellery": 0.04,
}
MERCHANT_SHARES = [0.35, 0.2, 0.25, 0.1, 0.06, 0.03, 0.01]
ITEM_GROUPS = {
    "outdoor": ["tent", "sleeping-bag", "hiking-boots", "headlamp", "trekking-poles", "camp-stove"],
    "kitchen": ["chef-knife", "cast-iron-pan", "coffee-grinder", "kettle", "cutting-board"],
    "office": ["desk-lamp", "notebook", "fountain-pen", "monitor-stand", "ergonomic-chair"],
    "fitness": ["yoga-mat", "dumbbells", "jump-rope", "foam-roller", "water-bottle"],
    "reading": ["novel", "cookbook", "travel-guide", "poetry-collection", "bookmark-set"],
}


def card_transactions(rows: int = 6000, fraud_rate: float = 0.02, seed: int = 7) -> pd.DataFrame:
    """Card transactions: mostly ordinary, a few with the marks of fraud (``is_fraud``)."""
    rng = np.random.default_rng(seed)
    fraud = rng.random(rows) < fraud_rate
    usual = rng.choice(MERCHANT_CATEGORIES[:5], size=rows, p=[0.35, 0.2, 0.25, 0.12, 0.08])
    risky = rng.choice(MERCHANT_CATEGORIES[3:], size=rows)
    frame = pd.DataFrame(
        {
            "amount": np.round(
                np.where(fraud, rng.lognormal(6.3, 0.9, rows), rng.lognormal(3.4, 0.9, rows)), 2
            ),
            "hour": np.where(fraud, rng.integers(0, 6, rows), rng.integers(7, 23, rows)),
            "merchant_category": np.where(fraud, risky, usual),
            "foreign": np.where(fraud, rng.random(rows) < 0.7, rng.random(rows) < 0.05),
            "card_age_days": np.where(
                fraud, rng.integers(0, 30, rows), rng.integers(30, 3650, rows)
            ),
            "transactions_last_24h": np.where(fraud, rng.poisson(9, rows), rng.poisson(2, rows)),
            "distance_from_home_km": np.round(
                np.where(fraud, rng.exponential(800, rows), rng.exponential(8, rows)), 1
            ),
        }
    )
    frame["foreign"] = frame["foreign"].astype(bool)
    frame["is_fraud"] = fraud
    return frame


def merchant_outcomes(rows: int = 5000, seed: int = 13) -> pd.DataFrame:
    """Transactions' merchant category and whether each proved ``fraud`` or ``legit``, drawn
    with the known rates :data:`FRAUD_RATES`."""
    rng = np.random.default_rng(seed)
    category = rng.choice(MERCHANT_CATEGORIES, size=rows, p=MERCHANT_SHARES)
    rate = np.array([FRAUD_RATES[c] for c in category])
    outcome = np.where(rng.random(rows) < rate, "fraud", "legit")
    return pd.DataFrame({"merchant_category": category, "outcome": outcome})


def item_names() -> list[str]:
    return [item for group in ITEM_GROUPS.values() for item in group]


def interactions(users: int = 300, seed: int = 11) -> dict[str, list[str]]:
    """Which items each user bought: users mostly shop in one or two interest groups."""
    rng = np.random.default_rng(seed)
    groups = list(ITEM_GROUPS.values())
    history: dict[str, list[str]] = {}
    for u in range(users):
        liked = rng.choice(len(groups), size=rng.integers(1, 3), replace=False)
        items: set[str] = set()
        for g in liked:
            group = groups[g]
            items.update(rng.choice(group, size=rng.integers(2, len(group) + 1), replace=False))
        if rng.random() < 0.3:  # an occasional purchase outside the user's interests
            items.add(str(rng.choice(item_names())))
        history[f"user-{u:03d}"] = sorted(str(i) for i in items)
    return history


def sentiment_corpus() -> pd.DataFrame:
    """Short reviews labelled ``negative`` or ``positive``, shipped with foretell."""
    path = resources.files("foretell.examples") / "data" / "sentiment.csv"
    with resources.as_file(path) as csv:
        return pd.read_csv(csv)
