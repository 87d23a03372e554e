"""Figures: particles, phase diagrams, run overviews, stability maps and movies (matplotlib, Agg).
"""
