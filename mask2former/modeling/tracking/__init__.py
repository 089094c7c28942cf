"""Associating video instances across clips of a long video."""
