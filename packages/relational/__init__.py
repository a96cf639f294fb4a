"""Relational data: the Relational Transformer over real databases, zero-shot and fine-tuned.

- `database`: DuckDB / SQLite / PostgreSQL readers (read-only) and schema discovery (keys, time columns);
- `demo`: the generated shop database (customers, products, orders, reviews) and its churn task;
- `sampling`: vectorised context sampling over foreign keys, never past the prediction time;
- `model`: the Relational Transformer on shared_attention's metadata masks;
- `baseline`: gradient-boosted trees on aggregate features over the same foreign-key paths;
- `relbench_source`: `relbench:<dataset>/<task>` sources; `domain` / `cli`: the engine's task and CLI.

    python -m panformer.relational.cli train --recipe demo --out runs/relational/demo
    python -m panformer.relational.cli schema --data duckdb:///shop.duckdb
"""
