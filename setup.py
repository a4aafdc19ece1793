"""The optional compiled exit loop (``xinterface._fastloop``) and virtio data path
(``xinterface._dataplane``); everything else is in pyproject.toml. ``optional=True``: without
a compiler or Python's headers the build goes on and the package runs its Python paths (see
xinterface/accel.py)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "xinterface._fastloop",
            ["src/xinterface/_fastloop.c"],
            optional=True,
            extra_compile_args=["-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        ),
        Extension(
            "xinterface._dataplane",
            ["src/xinterface/_dataplane.c"],
            optional=True,
            extra_compile_args=["-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        ),
    ],
)
