# One image for every Python service of every pattern; the compose command picks the role.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=0 \
    UV_COMPILE_BYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN pip install --no-cache-dir uv

# dependencies first, at the versions of uv.lock, so code edits do not reinstall them
COPY pyproject.toml uv.lock README.md ./
RUN uv export --locked --no-dev --no-emit-project --no-hashes -o /tmp/requirements.txt \
    && uv pip install --system --no-cache -r /tmp/requirements.txt

COPY . .
RUN uv pip install --system --no-cache --no-deps . \
    && useradd --create-home --uid 1000 app && mkdir -p /data && chown app /data
USER app
VOLUME ["/data"]
EXPOSE 8000
CMD ["python", "-m", "patternkit", "list"]
