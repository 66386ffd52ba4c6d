"""The dnntune cloud server (gRPC): profiles layers and runs model tails for split inference.

The server itself comes with the gRPC protocol (issue 4); the logic it will wire up
(profiler, splitter) lives in :mod:`dnntune`.
"""
