#!/usr/bin/env python
"""The bakery orders service's management commands (dbinit's, Django style).

    python manage.py migrate      # what the migration job runs
    python manage.py verify       # what every service pod checks
"""

from dbinit.management import execute_from_command_line

if __name__ == "__main__":
    execute_from_command_line()
