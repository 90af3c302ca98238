"""``dbinit lint``: what each revision's SQL will do to a live database (needs the ``lint`` extra)."""
