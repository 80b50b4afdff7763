"""Baselines measured in the same run as fastrelay: small and obviously correct."""
