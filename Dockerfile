# pgwarden: multi-stage build, slim runtime, non-root, `pgwarden serve` as the entrypoint.
# The build stage compiles the hot modules with mypyc (proxy/native.py): a C compiler and mypy
# are needed here, not in the image.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && pip install --no-cache-dir 'setuptools>=77' wheel 'mypy>=1.10'
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
RUN PGWARDEN_COMPILE=1 pip wheel --no-cache-dir --no-build-isolation --no-deps -w /wheels . \
 && python -m venv /opt/pgwarden \
 && /opt/pgwarden/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/pgwarden/bin/pip install --no-cache-dir /wheels/pgwarden-*.whl \
 && /opt/pgwarden/bin/pgwarden --version | grep -q 'compiled (mypyc)'

FROM python:3.11-slim
# psql is for `pgwarden psql` and for debugging from inside the container; nothing else is added.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/pgwarden --create-home pgwarden \
 && mkdir -p /etc/pgwarden /var/log/pgwarden \
 && chown pgwarden:pgwarden /var/log/pgwarden
COPY --from=build /opt/pgwarden /opt/pgwarden
ENV PATH=/opt/pgwarden/bin:$PATH PYTHONUNBUFFERED=1
USER pgwarden
WORKDIR /var/lib/pgwarden
# 6432: Postgres clients; 8080: HTTP API, /metrics, /healthz (listen addresses come from the config).
EXPOSE 6432 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"
ENTRYPOINT ["pgwarden", "serve"]
CMD ["--config", "/etc/pgwarden/pgwarden.yaml"]
