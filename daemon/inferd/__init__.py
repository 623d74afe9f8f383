"""inferd: an edge inference daemon for ARM Linux boards."""

__version__ = "0.1.0"
