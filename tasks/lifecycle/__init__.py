"""The data lifecycle: how long raw payloads and mail bodies are kept (`retention`), and erasing a
student's personal data while keeping the anonymised financial records (`erasure`)."""
