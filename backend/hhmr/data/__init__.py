"""Synthetic training data: the anatomical pose prior."""
