"""Command handlers of the upload service."""

from __future__ import annotations

# --- upload sessions and manifests -------------------------------------------------------

# --- staging scenes to the farm ----------------------------------------------------------

# --- outputs ------------------------------------------------------------------------------
