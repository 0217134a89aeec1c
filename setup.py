"""The one C extension of the package: the uplink's PUBLISH reader (bridge/_publish.c).

Everything else about the package is in pyproject.toml; setuptools reads both.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mqtt_operator.bridge._publish",
            sources=["operator/mqtt_operator/bridge/_publish.c"],
            extra_compile_args=["-O2", "-Wall", "-Werror"],
            # A machine without a compiler still installs the package (the kubectl plugin, say): the
            # bridge then reads every PUBLISH in Python. The image checks that it was built.
            optional=True,
        )
    ]
)
