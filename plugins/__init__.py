"""Built-in plugins. Each module is one concern and registers through the ``duma``
entry-point group in pyproject.toml, exactly like a third-party plugin."""
