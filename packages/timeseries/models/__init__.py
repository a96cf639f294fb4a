"""Time-series models, all on `shared_attention`."""
