"""Configuration (schema, validation, TOML) and atomic file storage with the data loaders: the
bottom layer, imported by every other.
"""
