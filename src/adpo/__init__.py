"""Autoregressive Direct Preference Optimization."""
