# fleetscore for a cluster: one image for the scheduler (its scoring and training drivers), the backfill RayJob, and
# the Ray head and worker pods, so every process runs the same fleetscore and Ray versions.
#
#   docker build -t fleetscore:0.1.0 .
#   docker run --rm fleetscore:0.1.0 --help
#
# Credentials (AWS_*, AZURE_STORAGE_*) and the catalog URL come from the environment at run time
# (a Kubernetes Secret): none are baked into the image.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fleetscore
WORKDIR /src
COPY requirements/all.lock ./requirements/
# every extra at the exact versions (with hashes) the suite passed with: a rebuild gets the same image
RUN /opt/fleetscore/bin/pip install --require-hashes -r requirements/all.lock
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/fleetscore/bin/pip install --no-deps .

FROM python:3.11-slim
# wget: KubeRay's health probes call it inside Ray pods
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash fleetscore \
    && echo 'export PATH=/opt/fleetscore/bin:$PATH' > /etc/profile.d/fleetscore.sh
# the profile.d line: KubeRay's login-shell start (before v1.4, or ENABLE_LOGIN_SHELL) resets PATH
COPY --from=build /opt/fleetscore /opt/fleetscore
ENV PATH=/opt/fleetscore/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLEETSCORE_HOME=/home/fleetscore/home \
    RAY_USAGE_STATS_ENABLED=0
USER 1000
WORKDIR /home/fleetscore
ENTRYPOINT ["fleetscore"]
CMD ["--help"]
