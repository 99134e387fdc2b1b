"""An example duma plugin: a tool, an echo backend and a ``duma hello`` command."""

__version__ = "0.1.0"
