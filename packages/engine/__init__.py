"""The shared training engine: recipes, loop, checkpoints, logging, distributed, CLI."""
