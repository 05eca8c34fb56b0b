"""The ``powercap`` command line: the shell over the placement core and the extender."""
