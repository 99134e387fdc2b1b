"""A plugin whose module cannot be imported."""

raise ImportError("duma_fixture_missing_dependency is not installed")
