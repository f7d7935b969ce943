"""Built-in collector plugins, each a self-contained package."""
