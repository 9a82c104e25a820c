"""Adversarial margins (issue 5)."""
