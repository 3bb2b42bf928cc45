"""Thin absl entry points: each parses flags/config and calls a library function."""
