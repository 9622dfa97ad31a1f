"""shardflow: web-scale multilingual text shards in, a clean corpus out, on Ray Data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shardflow")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
