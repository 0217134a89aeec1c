"""The C extensions of the package: the uplink's PUBLISH reader (bridge/_publish.c) and the Kafka sink's
record batches (bridge/_kafka_batch.c).

Everything else about the package is in pyproject.toml; setuptools reads both.
"""

from setuptools import Extension, setup

# A machine without a compiler still installs the package (the kubectl plugin, say): the bridge then
# reads every PUBLISH in Python and builds Kafka batches with aiokafka's builder. The image checks that
# both were built.
setup(
    ext_modules=[
        Extension(
            f"mqtt_operator.bridge.{name}",
            sources=[f"operator/mqtt_operator/bridge/{name}.c"],
            extra_compile_args=["-O2", "-Wall", "-Werror"],
            optional=True,
        )
        for name in ("_publish", "_kafka_batch")
    ]
)
