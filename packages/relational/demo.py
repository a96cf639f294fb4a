"""The embedded demo database: a generated shop (customers, products, orders, reviews) with a churn task.

Churn is driven by things a model can see before the prediction time: each customer has a hidden
satisfaction (raised or lowered by the quality of the product category they prefer); unhappy customers
leave sooner, write worse reviews, and order less and less in the weeks before they leave. The same
generator, with other table and column names (`variant`), makes the databases used for pretraining,
so zero-shot prediction on the shop is a prediction on a database the model never saw.

    duckdb:///runs/data/relational/shop-0.duckdb   (written on demand by `ensure_demo_database`)
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from panformer.engine.files import atomic_path

START = pd.Timestamp("2024-01-01")
DAYS = 365
CATEGORIES = ["books", "garden", "gadgets", "toys", "kitchen"]
CATEGORY_QUALITY = np.array([0.6, 0.3, -0.8, -0.2, 0.2])  # gadgets break; books please
REGIONS = ["north", "south", "east", "west"]
GOOD_WORDS = ["great", "quality", "fast", "delivery", "love", "perfect", "recommend", "sturdy"]
BAD_WORDS = ["broken", "slow", "refund", "cheap", "disappointed", "late", "returned", "poor"]

# Table and column names of each variant: the shop's names, renamed for the pretraining databases.
VARIANTS: dict[str, dict[str, str]] = {
    "shop": {},
    "stream": {
        "customers": "subscribers", "customer_id": "subscriber_id", "signup_time": "joined_at", "region": "country",
        "products": "titles", "product_id": "title_id", "category": "genre", "price": "length_minutes",
        "launched": "released_at", "orders": "plays", "order_id": "play_id", "order_time": "played_at",
        "quantity": "episodes", "amount": "minutes_watched", "reviews": "ratings", "review_id": "rating_id",
        "review_time": "rated_at", "rating": "stars", "text": "comment",
    },
    "gym": {
        "customers": "members", "customer_id": "member_id", "signup_time": "member_since", "region": "club",
        "products": "classes", "product_id": "class_id", "category": "kind", "price": "fee",
        "launched": "started", "orders": "bookings", "order_id": "booking_id", "order_time": "booked_at",
        "quantity": "spots", "amount": "paid", "reviews": "feedback", "review_id": "feedback_id",
        "review_time": "given_at", "rating": "score", "text": "note",
    },
}

CHURN_SQL = """\
WITH times AS (
  SELECT range AS ts FROM range(TIMESTAMP '2024-03-01', TIMESTAMP '2024-12-01', INTERVAL {step} DAY))
SELECT c.{customer_id} AS entity_id, t.ts AS timestamp,
       CAST(NOT EXISTS (SELECT 1 FROM {orders} o WHERE o.{customer_id} = c.{customer_id}
                        AND o.{order_time} > t.ts AND o.{order_time} <= t.ts + INTERVAL 30 DAY) AS INTEGER) AS label
FROM times t JOIN {customers} c ON c.{signup_time} <= t.ts
WHERE EXISTS (SELECT 1 FROM {orders} o WHERE o.{customer_id} = c.{customer_id}
              AND o.{order_time} <= t.ts AND o.{order_time} > t.ts - INTERVAL 90 DAY)
"""


def name_of(variant: str, name: str) -> str:
    return VARIANTS[variant].get(name, name)


def churn_sql(variant: str = "shop", *, step_days: int = 14) -> str:
    """The churn task: for customers active in the last 90 days, 1 if they order nothing in the next 30."""
    names = ["customer_id", "orders", "order_time", "customers", "signup_time"]
    return CHURN_SQL.format(step=step_days, **{n: name_of(variant, n) for n in names})


def generate_tables(*, seed: int, customers: int = 500, products: int = 30) -> dict[str, pd.DataFrame]:
    """The shop's four tables (shop names), generated from `seed`."""
    rng = np.random.default_rng(seed)
    # Products: a category, a price, a launch date.
    category = rng.integers(0, len(CATEGORIES), products)
    product_frame = pd.DataFrame({
        "product_id": np.arange(1, products + 1),
        "category": [CATEGORIES[c] for c in category],
        "price": np.round(np.exp(rng.normal(3.0, 0.6, products)), 2),
        "launched": START - pd.to_timedelta(rng.integers(30, 400, products), unit="D"),
    })
    # Customers: signup day, base activity, preferred category, hidden satisfaction and lifetime.
    signup = rng.uniform(0, 240, customers)
    rate = np.exp(rng.normal(np.log(0.12), 0.5, customers))  # orders per day
    preferred = rng.integers(0, len(CATEGORIES), customers)
    satisfaction = rng.normal(0, 1, customers) + CATEGORY_QUALITY[preferred]
    lifetime = rng.exponential(110 * np.exp(0.7 * satisfaction))
    end = signup + lifetime
    customer_frame = pd.DataFrame({
        "customer_id": np.arange(1, customers + 1),
        "signup_time": START + pd.to_timedelta(signup, unit="D"),
        "region": [REGIONS[r] for r in rng.integers(0, len(REGIONS), customers)],
        "age": rng.integers(18, 75, customers),
    })

    orders, reviews = [], []
    by_category = [np.flatnonzero(category == c) for c in range(len(CATEGORIES))]
    for c in range(customers):
        stop = min(end[c], DAYS)
        if stop <= signup[c]:
            continue
        # Thinning of a Poisson process: activity fades over the 45 days before the customer leaves.
        n = rng.poisson(rate[c] * (stop - signup[c]))
        days = np.sort(rng.uniform(signup[c], stop, n))
        fade = np.clip((end[c] - days) / 45.0, 0.25, 1.0)
        days = days[rng.uniform(size=n) < fade]
        for day in days:
            pool = by_category[preferred[c]] if rng.uniform() < 0.7 and len(by_category[preferred[c]]) else None
            p = int(rng.choice(pool) if pool is not None else rng.integers(0, products))
            quantity = int(rng.integers(1, 4))
            orders.append((c + 1, p + 1, day, quantity, round(quantity * product_frame.price[p], 2)))
            if rng.uniform() < 0.4:
                near_end = float(end[c] - day < 45)
                score = 3.2 + 0.9 * satisfaction[c] + CATEGORY_QUALITY[category[p]] - 1.0 * near_end
                rating = int(np.clip(np.round(score + rng.normal(0, 0.7)), 1, 5))
                words = rng.choice(GOOD_WORDS if rating >= 3 else BAD_WORDS, 3, replace=False)
                reviews.append((c + 1, p + 1, day + rng.uniform(1, 10), rating, " ".join(words)))
    order_frame = pd.DataFrame(orders, columns=["customer_id", "product_id", "day", "quantity", "amount"])
    order_frame.insert(0, "order_id", np.arange(1, len(order_frame) + 1))
    order_frame.insert(3, "order_time", START + pd.to_timedelta(order_frame.pop("day"), unit="D"))
    review_frame = pd.DataFrame(reviews, columns=["customer_id", "product_id", "day", "rating", "text"])
    review_frame = review_frame[review_frame.day < DAYS].reset_index(drop=True)
    review_frame.insert(0, "review_id", np.arange(1, len(review_frame) + 1))
    review_frame.insert(3, "review_time", START + pd.to_timedelta(review_frame.pop("day"), unit="D"))
    for frame in (customer_frame, product_frame, order_frame, review_frame):
        for column in frame.columns:
            if pd.api.types.is_datetime64_any_dtype(frame[column]):
                frame[column] = frame[column].dt.floor("s")
    return {"customers": customer_frame, "products": product_frame, "orders": order_frame, "reviews": review_frame}


DDL = {
    "customers": "customer_id INTEGER PRIMARY KEY, signup_time TIMESTAMP, region VARCHAR, age INTEGER",
    "products": "product_id INTEGER PRIMARY KEY, category VARCHAR, price DOUBLE, launched TIMESTAMP",
    "orders": "order_id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(customer_id), "
              "product_id INTEGER REFERENCES products(product_id), order_time TIMESTAMP, quantity INTEGER, "
              "amount DOUBLE",
    "reviews": "review_id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(customer_id), "
               "product_id INTEGER REFERENCES products(product_id), review_time TIMESTAMP, rating INTEGER, "
               "text VARCHAR",
}


def renamed_ddl(variant: str, table: str) -> str:
    import re

    return re.sub(r"\b[a-z_]+\b", lambda m: name_of(variant, m.group(0)), DDL[table])


def write_database(path: Path, tables: dict[str, pd.DataFrame], *, variant: str = "shop") -> Path:
    """Write the tables to a DuckDB file with primary and foreign keys (atomically)."""
    with atomic_path(path) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            for table in ("customers", "products", "orders", "reviews"):  # parents before children
                frame = tables[table].rename(columns=lambda c: name_of(variant, c))
                name = name_of(variant, table)
                con.execute(f"CREATE TABLE {name} ({renamed_ddl(variant, table)})")
                con.register("frame", frame)
                con.execute(f"INSERT INTO {name} SELECT * FROM frame")
                con.unregister("frame")
        finally:
            con.close()
        wal = Path(f"{tmp}.wal")
        if wal.exists():
            os.remove(wal)
    return path


def ensure_demo_database(
    folder: Path, *, variant: str = "shop", seed: int = 0, customers: int = 500
) -> Path:
    """The generated database file for (variant, seed, customers), written on first use."""
    path = Path(folder) / f"{variant}-{seed}-{customers}.duckdb"
    if not path.exists():
        write_database(path, generate_tables(seed=seed, customers=customers), variant=variant)
    return path
