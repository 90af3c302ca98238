"""dbinit's pytest plugin: migration tests every project gets, and databases for its own tests.

Installed with dbinit (the ``pytest11`` entry point ``dbinit``), it changes
nothing until a project asks: ``--dbinit-migrations`` or the ini option
``dbinit_migrations = true`` adds the migration tests
(:mod:`dbinit.testing.items`), and the fixtures ``dbinit_database``,
``dbinit_database_at`` and ``dbinit_migrator`` (:mod:`dbinit.testing.plugin`)
give a project's own tests real databases, each made for one test and
dropped after it.

Importing this package imports nothing heavy: SQLAlchemy and Alembic load
only when a migration test or a fixture runs.
"""

from __future__ import annotations
