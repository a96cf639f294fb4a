"""Tests of the music domain."""
