"""The Flask ingress: an app factory with one blueprint per source."""
from ingress.app import create_app

__all__ = ["create_app"]
