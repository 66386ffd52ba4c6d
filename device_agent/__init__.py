"""The dnntune device agent (gRPC): profiles the device side and runs model heads.

The agent itself comes with the gRPC protocol (issue 4); the logic it will wire up
(profiler, splitter) lives in :mod:`dnntune`.
"""
