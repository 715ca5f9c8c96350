# The pyoci node installer (kata-deploy style). The image carries a self-contained interpreter tree
# (Debian's python3.11, its stdlib, pyoci and protobuf, every shared library they need and the dynamic
# loader: nothing of the node's Python or libraries is used) and deploy/install.sh, its entrypoint, which
# installs the tree onto the node whose root is mounted at /host (see docs/kubernetes.md).
#
#   with a registry:   docker build -t pyoci-installer .
#   offline (CI):      python -m integration.harness.installer build
#                      (bases made with debootstrap, built with buildah, vfs storage, no daemon)
ARG BUILD_BASE=docker.io/library/debian:bookworm
ARG RUNTIME_BASE=docker.io/library/debian:bookworm-slim

# The interpreter and pyoci's dependencies: depends only on the base, pyproject.toml and build-interpreter.sh
# (a cached layer; it apt-gets python3.11, pip and libseccomp2 if the base lacks them).
FROM ${BUILD_BASE} AS interpreter
COPY pyproject.toml deploy/build-interpreter.sh /src/
RUN sh /src/build-interpreter.sh /src /opt/pyoci/tree

# pyoci from this checkout, the launchers, tree/VERSION (<version>-<hash of the tree>), the installer.
FROM interpreter AS tree
COPY . /src
RUN sh /src/deploy/build-pyoci.sh /src /opt/pyoci/tree && cp /src/deploy/install.sh /opt/pyoci/install.sh

FROM ${RUNTIME_BASE}
COPY --from=tree /opt/pyoci /opt/pyoci
ENTRYPOINT ["/opt/pyoci/install.sh"]
CMD ["daemonset"]
