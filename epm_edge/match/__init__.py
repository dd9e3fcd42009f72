"""Catalog matching: blocking, scoring, assignment, output. Free of torch/transformers imports."""
