"""Evaluation: judges, attack-success-rate and over-refusal reports."""
