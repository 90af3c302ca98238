"""The built-in plugins, registered through the same hooks as third parties.

Installed as ``dbinit.plugins``; one module per plugin family.
"""
