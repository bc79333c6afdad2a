"""Deployment helpers: local stack (``deploy.local``) and container files (``deploy/docker``)."""
