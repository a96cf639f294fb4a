"""`python -m panformer ...`: the umbrella command, so `torchrun -m panformer DOMAIN train ...` works too."""

from panformer.cli import app

if __name__ == "__main__":
    app()
