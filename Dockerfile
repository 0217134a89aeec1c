# The one image of mqtt-operator: `mqtt-operator run` (the operator) and `mqtt-operator bridge` (the
# workers), chosen by the first argument. Builds with `docker build .` and with buildah
# (hack/images/build.sh), on Debian's Python 3.11, the version the tests run on.

FROM debian:bookworm-slim AS python
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

FROM python AS build
ARG DEBIAN_FRONTEND=noninteractive
# The compiler and Python's headers build the C extensions (operator/mqtt_operator/bridge/_publish.c, the
# PUBLISH reader, and _kafka_batch.c, the Kafka record batches);
# only the venv goes on to the image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv python3-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
COPY pyproject.toml setup.py README.md /src/
COPY operator /src/operator
# Behind a TLS-intercepting proxy, pip needs its CA: `--secret id=build-ca,src=<CA bundle>` mounts it
# for this step only. Without the secret (a plain `docker build .`) pip uses its own CA list.
RUN --mount=type=secret,id=build-ca,target=/run/secrets/build-ca \
    if [ -s /run/secrets/build-ca ]; then export PIP_CERT=/run/secrets/build-ca; fi \
 && /opt/venv/bin/pip install --no-cache-dir /src \
 && /opt/venv/bin/python -c 'import mqtt_operator.bridge._publish, mqtt_operator.bridge._kafka_batch' \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools

FROM python
RUN groupadd --gid 65532 mqtt-operator \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mqtt-operator
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
ENTRYPOINT ["mqtt-operator"]
CMD ["run"]
