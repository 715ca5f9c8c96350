# An installer image for nodes: `docker run --rm -v /usr/local:/host/usr/local IMAGE` copies a
# self-contained pyoci (a venv with the shim and the CLI) to the host's /usr/local/lib/pyoci and links
# containerd-shim-pyoci-v2 and pyoci into /usr/local/bin, where containerd finds them.
FROM debian:bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv libseccomp2 \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /usr/local/lib/pyoci && /usr/local/lib/pyoci/bin/pip install --no-cache-dir /src

FROM debian:bookworm-slim
COPY --from=build /usr/local/lib/pyoci /usr/local/lib/pyoci
CMD ["sh", "-c", "mkdir -p /host/usr/local/lib /host/usr/local/bin && cp -a /usr/local/lib/pyoci /host/usr/local/lib/ && ln -sf /usr/local/lib/pyoci/bin/containerd-shim-pyoci-v2 /usr/local/lib/pyoci/bin/pyoci /host/usr/local/bin/"]
