FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY coursepipe coursepipe
COPY db db
COPY tasks tasks
COPY ingress ingress
COPY workers workers
COPY scheduler scheduler
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["coursepipe", "serve"]
