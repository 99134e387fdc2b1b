"""Built-in plugin (to be implemented)."""
