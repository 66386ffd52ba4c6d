"""From a recommendation to a deployed split (issue 23).

* :mod:`dnntune.deploy.policy`: the run-time policy table and its hysteresis (pure).
* :mod:`dnntune.deploy.bundle`: the bundle's manifest, loaded with every hash checked.
* :mod:`dnntune.deploy.export`: ``dnntune export``: LiteRT heads, the cloud model, the policy.

The runner that uses a bundle lives in :mod:`dnntune.runtime`.
"""
