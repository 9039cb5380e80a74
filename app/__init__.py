"""LEAP's service: the API, its client and the `leap` command."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("leap")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
