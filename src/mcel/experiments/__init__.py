"""Sweeps over grids of training and evaluation settings, with a SQLite results store."""
