# One image for every Python service of every pattern; the compose command picks the role.

# onnxruntime-web for S13's edge page, from the npm registry: the Makefile's `vendor` target
# (the same version and the same three files, into the folder the page serves), so the image
# never depends on what was vendored on the host (.dockerignore leaves that out).
FROM node:20-slim AS onnxruntime-web
ARG ORT_WEB_VERSION=1.30.0
WORKDIR /ort
RUN npm pack --quiet "onnxruntime-web@${ORT_WEB_VERSION}" \
    && tar -xzf "onnxruntime-web-${ORT_WEB_VERSION}.tgz" \
       package/dist/ort.wasm.min.js \
       package/dist/ort-wasm-simd-threaded.mjs \
       package/dist/ort-wasm-simd-threaded.wasm \
    && mkdir vendor && mv package/dist/* vendor/ \
    && touch "vendor/.onnxruntime-web-${ORT_WEB_VERSION}"

# The project image is the default target (the last stage is it); `--target model-in-image`
# builds O1's image instead: one model baked into its server (operation_patterns/model_in_image).
FROM python:3.11-slim AS project

# the run directories and the model cache go to the /data volume: /app is not the app
# user's to write
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=0 \
    UV_COMPILE_BYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATTERNKIT_RUNS_DIR=/data/runs \
    PATTERNKIT_MODEL_CACHE=/data/model-cache

WORKDIR /app
RUN pip install --no-cache-dir uv

# dependencies first, at the versions of uv.lock, so code edits do not reinstall them
COPY pyproject.toml uv.lock README.md ./
RUN uv export --locked --no-dev --no-emit-project --no-hashes -o /tmp/requirements.txt \
    && uv pip install --system --no-cache -r /tmp/requirements.txt

COPY . .
COPY --from=onnxruntime-web /ort/vendor serving_patterns/edge_prediction/static/vendor
RUN uv pip install --system --no-cache --no-deps . \
    && useradd --create-home --uid 1000 app && mkdir -p /data && chown app /data
USER app
VOLUME ["/data"]
EXPOSE 8000
CMD ["python", "-m", "patternkit", "list"]

# O1, the build step: train the model, pack it with its server into a bundle, unpack it
# (the same commands as the local stack's trainer and builder)
FROM project AS model-bundle
ARG MODEL_NAME=iris_lr
ARG MODEL_VERSION=1.0.0
ARG MODEL_SEED=42
ARG BUNDLE_IMAGE=iris
RUN python -m patternkit.trainer --model "$MODEL_NAME" --version "$MODEL_VERSION" \
        --seed "$MODEL_SEED" --no-cache --out /tmp/build/model \
    && python -m patternkit.builder build --registry /tmp/build/bundles \
        --image "$BUNDLE_IMAGE" /tmp/build/model \
    && python -m patternkit.builder unpack --registry /tmp/build/bundles \
        --image "$BUNDLE_IMAGE" --version "$MODEL_VERSION" --into /tmp/build/app

# O1, the image: the unpacked bundle and its pinned requirements, nothing else; its version
# is the model's (tag it so: docker build --target model-in-image -t ...-iris:<version>)
FROM python:3.11-slim AS model-in-image
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=model-bundle /tmp/build/app /opt/bundle
RUN pip install --no-cache-dir -r /opt/bundle/requirements.txt \
    && useradd --create-home --uid 1000 app
USER app
WORKDIR /opt/bundle/server
ENV PYTHONPATH=/opt/bundle/server \
    MODEL_PATH=/opt/bundle/model \
    BUNDLE_MANIFEST=/opt/bundle/bundle.json
EXPOSE 8000
CMD ["python", "-m", "patternkit.serve", "patternkit.predictor:create_app", \
     "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "20"]

# the default target: the project image above, unchanged
FROM project
