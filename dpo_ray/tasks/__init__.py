"""Embedded default tasks: no download needed."""
