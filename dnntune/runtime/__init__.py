"""Running a deployed split as an app would (issue 23): :class:`SplitRunner`."""

from dnntune.runtime.runner import InferenceResult, SplitRunner

__all__ = ["InferenceResult", "SplitRunner"]
