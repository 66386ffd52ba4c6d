"""Studies that run a model under many configurations in worker processes: the mobile-only
deployment study (framework/precision × threads × CPU affinity)."""
