"""The domain core: plain functions taking `*, session` and plain values. They never commit.

No Flask and no Dramatiq imports here; the caller owns the unit of work.
"""
