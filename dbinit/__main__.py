"""``python -m dbinit COMMAND``."""

from dbinit.management import main

if __name__ == "__main__":
    main()
