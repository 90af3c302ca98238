"""The revisions of a project, read without importing them.

- :mod:`.layout`: where the migrations live (``alembic.ini``);
- :mod:`.reader`: one revision file read statically (fast where that is exact);
- :mod:`.exact`: the exact static path, for what the fast one declines (:mod:`ast`);
- :mod:`.graph`: the revision graph (heads, bases, labels, pending);
- :mod:`.manifest`: the graph written at image build time;
- :mod:`.fallback`: the graph from Alembic, for files the reader cannot read;
- :mod:`.scripts`: all of it put together (:func:`read_migration_scripts`).

Nothing here imports Alembic except :mod:`.fallback`, and only when called.
"""
