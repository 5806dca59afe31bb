"""Quantisation: sites, configs and policies (imports torch only)."""
