"""The issue-21 reference: a minimal durable ingress, under the same gunicorn set-up as ours.

Checks the HMAC of the raw body (`Platform-Signature: t=…,v1=…`) with hmac.compare_digest, parses
the JSON, INSERTs it (event_id unique, payload jsonb) on a kept-open autocommit psycopg 3 connection,
LPUSHes the row id to Redis and answers 200: durable before the answer, like ours, and nothing more.
"""
import hashlib
import hmac
import json
import os

import psycopg
import redis
import sqlalchemy as sa
from flask import Flask, jsonify, request

# bench/ingest.py creates its table: minimal_event (id bigserial, event_id text unique, payload jsonb)

SECRET = os.environ["PLATFORM_WEBHOOK_SECRET"].encode()
DSN = sa.make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql").render_as_string(hide_password=False)
QUEUE = os.environ.get("REDIS_NAMESPACE", "bench") + ":minimal"

app = Flask(__name__)
db = psycopg.connect(DSN, autocommit=True)  # one per gunicorn worker (sync workers, no preload)
queue = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.post("/webhooks/platform")
def receive():
    raw = request.get_data()
    parts = dict(p.split("=", 1) for p in request.headers.get("Platform-Signature", "").split(",") if "=" in p)
    mac = hmac.new(SECRET, parts.get("t", "").encode() + b"." + raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, parts.get("v1", "")):
        return jsonify({"error": "invalid_signature"}), 400
    event = json.loads(raw)
    row = db.execute("INSERT INTO minimal_event (event_id, payload) VALUES (%s, %s::jsonb)"
                     " ON CONFLICT (event_id) DO NOTHING RETURNING id", (event["id"], raw.decode())).fetchone()
    if row:
        queue.lpush(QUEUE, row[0])
    return jsonify({"received": True, "duplicate": row is None})
