"""Shared schemas: events, commands, the job envelope and the error shape.

Every event and command is a pydantic model with a stable wire name (``event_type`` /
``command_type``) that does not depend on the Python class name, so classes can be renamed
or moved without breaking stored events.
"""
