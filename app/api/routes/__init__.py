"""The HTTP routes of ``rr serve``, one module per group; each exposes ``router``."""
