"""Datasets, dataset mappers and their registration."""
