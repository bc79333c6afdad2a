"""Read models of the upload service.

The gateway reads them (read-only) only through ``libs/readmodels/uploads.py`` and
``libs/readmodels/scenes.py`` (ADR 0007). Tables: ``services/upload/migrations``.
"""

from __future__ import annotations

# --- upload sessions and manifests -------------------------------------------------------

# --- outputs ------------------------------------------------------------------------------
