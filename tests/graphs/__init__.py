"""Tests for panformer.graphs."""
