"""The reference: a bare Flask endpoint under the same gunicorn config (reads the body, answers JSON)."""
from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/webhooks/platform")
def bare():
    request.get_data()
    return jsonify({"received": True, "duplicate": False})
