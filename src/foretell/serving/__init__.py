"""The host system's ways in over the network: REST (and later gRPC and the web page)."""

from foretell.serving.dataplane import DataPlane
from foretell.serving.http import create_app

__all__ = ["DataPlane", "create_app"]
