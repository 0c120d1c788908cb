"""GitOps pull-based reconciler for devices.

The public surface is the `reconciler` command (see `reconciler.cli`); modules are internal.
"""

__version__ = "0.1.0"
