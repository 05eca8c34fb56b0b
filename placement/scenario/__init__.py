"""Scenario files: the format, reading and building problems, the default and ServeGen scenarios."""
