# The shardflow image the KubeRay manifests run (cluster/kuberay/*.yaml): a Ray base image with shardflow
# installed from its wheel, the same way cluster/ray-cluster.yaml installs it on `ray up` nodes.
#
#   docker build -t ghcr.io/shardflow/shardflow:0.1.0 .
#   docker build --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu -t shardflow:0.1.0-cpu .
#
# Tags are pinned: the image's Ray must be the Ray of the cluster (KubeRay's rayVersion), and a rebuild must
# not pick up another one. The default base carries CUDA, for GPU workers; the -cpu base is smaller.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu124

# Stage 1: the wheel, built from this checkout (every subpackage and data file the package-dir mapping finds).
FROM ${RAY_IMAGE} AS wheel
WORKDIR /home/ray/src
COPY --chown=ray:users . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /home/ray/dist .

# Stage 2: the Ray image with shardflow and its dependencies; nothing of the source tree.
FROM ${RAY_IMAGE}
COPY --from=wheel /home/ray/dist/ /tmp/shardflow-dist/
RUN pip install --no-cache-dir /tmp/shardflow-dist/shardflow-*.whl && rm -rf /tmp/shardflow-dist
