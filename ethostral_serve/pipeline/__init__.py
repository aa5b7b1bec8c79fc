"""Pure pipeline logic: numpy arrays in, dataclasses and schema models out.

Nothing in this package imports Ray, FastAPI or Redis.
"""
