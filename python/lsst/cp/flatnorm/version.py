"""Package version."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lsst-cp-flatnorm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "unknown"
