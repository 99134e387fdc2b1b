"""Built-in plugin (to be implemented): training data and measurement for the two minds."""
