"""Scene processing before a render: the scene check, repathing and the render settings
steps (``steps.py``), run by the scene workers; see ``docs/pipeline.md``."""
