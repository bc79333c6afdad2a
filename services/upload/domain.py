"""Aggregates of the upload service: pure decisions, no I/O."""

from __future__ import annotations

# --- upload sessions and manifests -------------------------------------------------------

# --- staging scenes to the farm ----------------------------------------------------------

# --- outputs ------------------------------------------------------------------------------
