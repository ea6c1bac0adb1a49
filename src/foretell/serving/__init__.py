"""The host system's ways in over the network: REST, gRPC and the web pages, on one data plane.

Nothing is imported here, so that the supervisor of ``foretell serve --workers N`` (which uses
:mod:`foretell.serving.workers` alone) starts its workers without importing a server.
"""
