"""gunicorn settings for the ingress (`coursepipe ingress` / docker-compose)."""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
keepalive = 5
timeout = 30
graceful_timeout = 20
accesslog = None  # one structured line per event comes from the app itself
errorlog = "-"
# each worker builds its own engine and broker connection after the fork
preload_app = False
