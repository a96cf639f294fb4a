"""Tests of panformer.molecules."""
