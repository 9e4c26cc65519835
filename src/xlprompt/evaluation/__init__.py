"""Evaluation: per-language scoring, pooled features, representation alignment."""
