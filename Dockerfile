# The image the k8s/ manifests run: Ray's official GPU image plus raygan.
#
#   docker build -t raygan:0.1.0 .
#
# The Ray version in this tag must match the `ray[...]==` pin in pyproject.toml and
# `rayVersion` in k8s/*.yaml: Ray refuses to mix versions inside one cluster.
# `-gpu` is Ray's alias for its default CUDA build; pick an explicit `-cuXXX` tag to pin CUDA.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

# The base image runs as the unprivileged `ray` user; create the source directory as
# that user so the in-tree `pip install .` below can write its build metadata.
RUN mkdir -p /home/ray/raygan
WORKDIR /home/ray/raygan

# Dependencies first, read from pyproject.toml so torch and ray stay pinned exactly as the
# project pins them. This layer (several GB of CUDA wheels) is rebuilt only when the
# dependency list changes, not on every code edit.
COPY --chown=ray:users pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code itself. The repo stays at this path: RayJobs start their driver here
# (runtime_env working_dir local:///home/ray/raygan), so `search_spaces/...` resolves.
COPY --chown=ray:users . ./
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info
