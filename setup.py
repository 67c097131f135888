"""Builds the optional C accelerator; every other piece of metadata is in setup.cfg.

``optional=True``: without a working compiler (or Python headers) the build says so and
goes on, and Twinkly runs its pure-Python implementation (twinkly/wire/accel.py,
twinkly/tracking/python_tracker.py, twinkly/compare/lane.py,
twinkly/proxy/sockets.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "twinkly.wire._accel",
            sources=["twinkly/wire/_accel.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "twinkly.tracking._tracker",
            sources=[
                "twinkly/tracking/_tracker.c",
                "twinkly/tracking/_tracker_machine.c",
                "twinkly/tracking/_tracker_results.c",
                "twinkly/tracking/_pairer.c",
                "twinkly/tracking/_owing.c",
            ],
            depends=["twinkly/tracking/_tracker.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "twinkly.proxy._dispatch",
            sources=["twinkly/proxy/_dispatch.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "twinkly.compare._lane",
            sources=["twinkly/compare/_lane.c"],
            depends=["twinkly/tracking/_tracker.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
