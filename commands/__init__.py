"""The built-in management commands, one module each (installed as ``dbinit.commands``)."""
