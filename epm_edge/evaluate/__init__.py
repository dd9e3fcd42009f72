"""Metrics and the accuracy verification gate."""
