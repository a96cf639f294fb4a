"""The shared attention core."""
