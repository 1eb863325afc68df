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


def on_starting(server):
    """Multi-process Prometheus metrics: start each run with an empty directory."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
