"""The Flask ingress: an app factory (`ingress.app.create_app`) with one blueprint per source."""
