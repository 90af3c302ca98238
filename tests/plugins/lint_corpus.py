"""The lint corpus: migration shapes, each a real Alembic project, and the findings each must get.

Every :class:`Shape` is one thing a reviewer worries about (or its safe
counterpart), written as a revision body of real ``op.*`` calls or raw
``op.execute`` SQL. :func:`build` makes it a project the way a user makes
one: ``alembic init`` (generic template), ``alembic revision`` for a base
revision that creates the existing tables (:data:`BASE_BODY`), then
``alembic revision`` once per revision of the shape, with the body written
into the generated file.

``EXPECTED`` below is the table to edit when a rule's behaviour changes: the
dbinit finding ids ``dbinit lint --from <FROM> --format json`` reports on the
shape's revisions, as a sorted multiset (a rule that fires twice is listed
twice). Conventions, so that each shape shows one rule and not the others:

- every revision starts with ``op.execute("SET lock_timeout = '5s'")`` unless
  the shape says ``lock_timeout=False`` (dbinit.L010's own shapes);
- a revision declared contract also says ``dbinit_compatible_since`` = the
  base revision (the release running before it no longer uses what it
  drops), unless the shape is about dbinit.L021;
- lint runs ``--from`` the base revision unless the shape says otherwise
  (``lint_from=None``: no ``--from``, every revision linted, findings compared
  on the shape's revisions only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

#: The revision that creates the existing tables (not "base": Alembic reserves that word).
BASE = "tables0001"

#: The existing tables: what the shapes alter. ``events`` has no primary key (for ADD PRIMARY KEY).
BASE_BODY = """\
op.create_table(
    "customers",
    sa.Column("id", sa.BigInteger(), primary_key=True),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("email", sa.Text()),
)
op.create_index("ix_customers_name", "customers", ["name"])
op.create_table(
    "orders",
    sa.Column("id", sa.BigInteger(), primary_key=True),
    sa.Column("customer_id", sa.BigInteger()),
    sa.Column("status", sa.String(20)),
    sa.Column("total", sa.Numeric(12, 2)),
    sa.Column("note", sa.Text()),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)
op.create_index("ix_orders_status", "orders", ["status"])
op.create_table("events", sa.Column("id", sa.BigInteger()), sa.Column("payload", sa.Text()))
"""

LOCK_TIMEOUT = "op.execute(\"SET lock_timeout = '5s'\")"
#: Module-level lines of a declared contract revision the base release is compatible with.
CONTRACT = ('dbinit_phase = "contract"', f'dbinit_compatible_since = "{BASE}"')
EXPAND = ('dbinit_phase = "expand"',)
AUTOCOMMIT = "with op.get_context().autocommit_block():"
#: SET NOT NULL without a long lock: a NOT VALID check first, then validated (a scan that lets
#: writes go on), then SET NOT NULL uses the check instead of scanning.
NOT_VALID_CHECK = (
    'op.execute("ALTER TABLE orders ADD CONSTRAINT orders_status_nn CHECK (status IS NOT NULL) NOT VALID")'
)
VALIDATE_CHECK = 'op.execute("ALTER TABLE orders VALIDATE CONSTRAINT orders_status_nn")'
SET_NOT_NULL = 'op.alter_column("orders", "status", nullable=False, existing_type=sa.String(20))'

#: A table a shape creates (so it is empty: index, type change, constraint need no care).
NEW_TABLE = (
    'op.create_table("invoices", sa.Column("id", sa.BigInteger(), primary_key=True), '
    'sa.Column("amount", sa.Integer()), sa.Column("ref", sa.Text()))'
)


@dataclasses.dataclass(frozen=True)
class Revision:
    """One revision of a shape: its ``upgrade()`` body and its module-level lines."""

    body: str
    module: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    revisions: tuple[Revision, ...]
    #: ``--from`` for lint (and for the offline SQL squawk reads): the base revision, a revision
    #: of the shape ("r1"), or None for no ``--from``.
    lint_from: str | None = BASE
    #: Start every revision with ``SET lock_timeout`` (see the module docstring).
    lock_timeout: bool = True
    #: What the shape shows, in a few words (the docs' table prints it).
    about: str = ""

    @property
    def revision_ids(self) -> tuple[str, ...]:
        return tuple(f"r{n}" for n in range(1, len(self.revisions) + 1))

    @property
    def sql_from(self) -> str:
        """Where the offline SQL of the shape's revisions starts."""
        return self.lint_from or BASE

    def linted_ids(self) -> tuple[str, ...]:
        """The shape's revisions that lint reports on (those after ``lint_from``)."""
        ids = self.revision_ids
        return ids[ids.index(self.lint_from) + 1 :] if self.lint_from in ids else ids


def shape(
    name: str,
    *bodies: str,
    module: tuple[str, ...] = (),
    lint_from: str | None = BASE,
    lock_timeout: bool = True,
    about: str = "",
) -> Shape:
    """A shape of one revision per body, all with the same module-level lines."""
    return Shape(name, tuple(Revision(b, module) for b in bodies), lint_from, lock_timeout, about)


# -- the shapes --------------------------------------------------------------------------------

SHAPES: tuple[Shape, ...] = (
    # L001: CREATE INDEX without CONCURRENTLY
    shape("index_plain", 'op.create_index("ix_orders_created_at", "orders", ["created_at"])'),
    shape("index_unique_plain", 'op.create_index("ux_orders_note", "orders", ["note"], unique=True)'),
    shape("index_raw_sql", 'op.execute("CREATE INDEX ix_orders_total ON orders (total)")'),
    shape(
        "index_concurrently_autocommit",
        f"{AUTOCOMMIT}\n"
        '    op.create_index("ix_orders_created_at", "orders", ["created_at"], postgresql_concurrently=True)',
    ),
    shape("index_on_new_table", f'{NEW_TABLE}\nop.create_index("ix_invoices_ref", "invoices", ["ref"])'),
    # L002: DROP COLUMN outside a declared contract
    shape("drop_column", 'op.drop_column("orders", "note")'),
    shape("drop_column_contract", 'op.drop_column("orders", "note")', module=CONTRACT),
    shape("drop_column_raw_sa_text", 'op.execute(sa.text("ALTER TABLE orders DROP COLUMN note"))'),
    shape("drop_column_raw_quoted_lowercase", "op.execute('alter table \"orders\" drop column \"note\"')"),
    # L003: DROP TABLE
    shape("drop_table", 'op.drop_table("events")'),
    shape("drop_table_contract", 'op.drop_table("events")', module=CONTRACT),
    # L004: RENAME COLUMN
    shape("rename_column", 'op.alter_column("orders", "note", new_column_name="remark")'),
    shape(
        "rename_column_contract",
        'op.alter_column("orders", "note", new_column_name="remark")',
        module=CONTRACT,
    ),
    # L005: RENAME TABLE
    shape("rename_table", 'op.rename_table("events", "audit_events")'),
    shape("rename_table_contract", 'op.rename_table("events", "audit_events")', module=CONTRACT),
    # L006: ALTER COLUMN TYPE
    shape(
        "alter_type",
        'op.alter_column("orders", "status", type_=sa.String(40), existing_type=sa.String(20))',
    ),
    shape(
        "alter_type_raw_using",
        'op.execute("ALTER TABLE orders ALTER COLUMN total TYPE bigint USING total::bigint")',
    ),
    shape(
        "alter_type_new_table",
        f"{NEW_TABLE}\n"
        'op.alter_column("invoices", "amount", type_=sa.BigInteger(), existing_type=sa.Integer())',
    ),
    # L007: ADD COLUMN NOT NULL without a default
    shape(
        "add_not_null_no_default",
        'op.add_column("orders", sa.Column("region", sa.Text(), nullable=False))',
    ),
    shape(
        "add_not_null_server_default",
        'op.add_column("orders", sa.Column("region", sa.Text(), nullable=False, server_default="eu"))',
    ),
    shape("add_nullable", 'op.add_column("orders", sa.Column("region", sa.Text(), nullable=True))'),
    # L008: SET NOT NULL
    shape("set_not_null", SET_NOT_NULL),
    shape(
        "set_not_null_raw_triple_quoted",
        'op.execute("""\n'
        "    ALTER TABLE orders ADD COLUMN region text;\n"
        "    UPDATE orders SET region = 'eu';\n"
        "    ALTER TABLE orders ALTER COLUMN region SET NOT NULL;\n"
        '""")',
    ),
    shape(
        "set_not_null_check_recipe",
        f"{NOT_VALID_CHECK}\n{VALIDATE_CHECK}\n{SET_NOT_NULL}",
        about="the NOT VALID + VALIDATE recipe first, in the same revision (one transaction)",
    ),
    shape(
        "set_not_null_recipe_earlier_revision",
        NOT_VALID_CHECK,
        f"{VALIDATE_CHECK}\n{SET_NOT_NULL}",
        about="the check NOT VALID in r1; VALIDATE and SET NOT NULL in r2",
    ),
    # L009: CHECK / FOREIGN KEY without NOT VALID
    shape("check_constraint", 'op.create_check_constraint("ck_orders_total", "orders", "total >= 0")'),
    shape(
        "foreign_key",
        'op.create_foreign_key("fk_orders_customer", "orders", "customers", ["customer_id"], ["id"])',
    ),
    shape(
        "foreign_key_not_valid_then_validate",
        'op.execute("ALTER TABLE orders ADD CONSTRAINT fk_orders_customer FOREIGN KEY (customer_id) '
        'REFERENCES customers (id) NOT VALID")',
        'op.execute("ALTER TABLE orders VALIDATE CONSTRAINT fk_orders_customer")',
        about="NOT VALID in r1, VALIDATE in r2 (its own transaction)",
    ),
    shape(
        "foreign_key_not_valid_validate_same_revision",
        'op.execute("ALTER TABLE orders ADD CONSTRAINT fk_orders_customer FOREIGN KEY (customer_id) '
        'REFERENCES customers (id) NOT VALID")\n'
        'op.execute("ALTER TABLE orders VALIDATE CONSTRAINT fk_orders_customer")',
        about="NOT VALID and VALIDATE in one transaction",
    ),
    shape(
        "check_constraint_new_table",
        f'{NEW_TABLE}\nop.create_check_constraint("ck_invoices_amount", "invoices", "amount >= 0")',
    ),
    # L010: no lock_timeout before a strong lock
    shape("no_lock_timeout", 'op.add_column("orders", sa.Column("region", sa.Text()))', lock_timeout=False),
    shape(
        "no_lock_timeout_one_per_revision",
        'op.add_column("orders", sa.Column("region", sa.Text()))\n'
        'op.add_column("customers", sa.Column("phone", sa.Text()))',
        lock_timeout=False,
    ),
    shape(
        "no_lock_timeout_each_revision",
        'op.add_column("orders", sa.Column("region", sa.Text()))',
        'op.add_column("customers", sa.Column("phone", sa.Text()))',
        lock_timeout=False,
    ),
    shape(
        "lock_timeout_too_late",
        'op.add_column("orders", sa.Column("region", sa.Text()))\n'
        f"{LOCK_TIMEOUT}\n"
        'op.add_column("customers", sa.Column("phone", sa.Text()))',
        lock_timeout=False,
    ),
    shape(
        "set_local_lock_timeout",
        "op.execute(\"SET LOCAL lock_timeout = '2s'\")\n"
        'op.add_column("orders", sa.Column("region", sa.Text()))',
        lock_timeout=False,
    ),
    shape("no_lock_timeout_new_table_only", NEW_TABLE, lock_timeout=False),
    # L011: CONCURRENTLY inside the transaction
    shape(
        "index_concurrently_in_transaction",
        'op.create_index("ix_orders_created_at", "orders", ["created_at"], postgresql_concurrently=True)',
    ),
    shape(
        "drop_index_concurrently_in_transaction",
        'op.drop_index("ix_orders_status", table_name="orders", postgresql_concurrently=True)',
    ),
    # L012: transaction control inside the migration's transaction
    shape(
        "commit_inside_migration",
        'op.add_column("orders", sa.Column("region", sa.Text()))\nop.execute("COMMIT")',
    ),
    shape("rollback_inside_migration", 'op.execute("ROLLBACK")'),
    # L013: ADD COLUMN that rewrites the table
    shape(
        "add_column_volatile_default",
        'op.add_column("orders", sa.Column("token", sa.Uuid(), server_default=sa.text("gen_random_uuid()")))',
    ),
    shape("add_column_bigserial_raw", 'op.execute("ALTER TABLE orders ADD COLUMN seq bigserial")'),
    shape(
        "add_column_identity",
        'op.add_column("events", sa.Column("seq", sa.BigInteger(), sa.Identity()))',
    ),
    shape(
        "add_column_stored_generated",
        'op.execute("ALTER TABLE orders ADD COLUMN total_cents bigint '
        'GENERATED ALWAYS AS ((total * 100)::bigint) STORED")',
    ),
    shape(
        "add_column_now_default",
        'op.add_column("orders", sa.Column("seen_at", sa.DateTime(timezone=True), '
        'server_default=sa.text("now()")))',
        about="now() is stable, not volatile: no rewrite",
    ),
    # L014: PRIMARY KEY / UNIQUE without USING INDEX
    shape("unique_constraint", 'op.create_unique_constraint("uq_customers_email", "customers", ["email"])'),
    shape("primary_key", 'op.create_primary_key("events_pkey", "events", ["id"])'),
    shape(
        "unique_using_concurrent_index",
        f"{AUTOCOMMIT}\n"
        '    op.create_index("uq_customers_email_idx", "customers", ["email"], unique=True, '
        "postgresql_concurrently=True)\n"
        'op.execute("ALTER TABLE customers ADD CONSTRAINT uq_customers_email UNIQUE USING INDEX '
        'uq_customers_email_idx")',
    ),
    # L015: DROP INDEX without CONCURRENTLY
    shape("drop_index", 'op.drop_index("ix_orders_status", table_name="orders")'),
    shape("drop_index_raw_sql", 'op.execute("DROP INDEX ix_orders_status")'),
    shape(
        "drop_index_concurrently_autocommit",
        f"{AUTOCOMMIT}\n"
        '    op.drop_index("ix_orders_status", table_name="orders", postgresql_concurrently=True)',
    ),
    shape(
        "drop_index_of_new_table",
        f'{NEW_TABLE}\nop.create_index("ix_invoices_ref", "invoices", ["ref"])\n'
        'op.drop_index("ix_invoices_ref", table_name="invoices")',
    ),
    # L016: SQL PostgreSQL's parser refuses
    shape("mysql_syntax", 'op.execute("ALTER TABLE orders ADD COLUMN region TEXT AFTER note")'),
    shape(
        "sqlite_pragma_among_statements",
        'op.execute("ALTER TABLE orders ADD COLUMN region TEXT; PRAGMA foreign_keys = ON")',
    ),
    # L020: declared expand, but a statement contracts
    shape("expand_declared_drops_column", 'op.drop_column("orders", "note")', module=EXPAND),
    shape("expand_declared_renames_table", 'op.rename_table("events", "audit_events")', module=EXPAND),
    shape(
        "expand_declared_adds_column",
        'op.add_column("orders", sa.Column("region", sa.Text()))',
        module=EXPAND,
    ),
    # L021: --from FROM, and a contract that breaks the release at FROM
    Shape(
        "expand_and_contract_in_one_release",
        (
            Revision('op.add_column("customers", sa.Column("email_address", sa.Text()))', EXPAND),
            Revision(
                'op.drop_column("customers", "email")',
                ('dbinit_phase = "contract"', 'dbinit_compatible_since = "r1"'),
            ),
        ),
        about="r1 adds the replacement, r2 drops what it replaced; lint --from the base",
    ),
    Shape(
        "contract_in_a_later_release",
        (
            Revision('op.add_column("customers", sa.Column("email_address", sa.Text()))', EXPAND),
            Revision(
                'op.drop_column("customers", "email")',
                ('dbinit_phase = "contract"', 'dbinit_compatible_since = "r1"'),
            ),
        ),
        lint_from="r1",
        about="the same revisions, lint --from r1 (the release with the expand)",
    ),
    shape(
        "contract_breaking_the_base_release",
        'op.drop_column("customers", "email")',
        module=('dbinit_phase = "contract"',),
        about="declared contract, compatible only since itself",
    ),
    shape(
        "contract_without_from",
        'op.drop_column("customers", "email")',
        module=('dbinit_phase = "contract"',),
        lint_from=None,
        about="the same, linted without --from",
    ),
    # suppressions: L100, L101, L102
    shape(
        "suppressed_with_reason",
        "# dbinit: ignore[dbinit.L001] orders has 200 rows; builds in 40 ms\n"
        'op.create_index("ix_orders_created_at", "orders", ["created_at"])',
    ),
    shape(
        "suppressed_on_the_same_line",
        'op.create_index("ix_orders_created_at", "orders", ["created_at"])  '
        "# dbinit: ignore[dbinit.L001] a 200-row table",
    ),
    shape(
        "suppressed_two_ids",
        "# dbinit: ignore[dbinit.L001,dbinit.L010] customers has 12 rows\n"
        'op.create_index("ix_customers_email", "customers", ["email"])',
        lock_timeout=False,
    ),
    shape(
        "suppression_without_reason",
        "# dbinit: ignore[dbinit.L001]\n"
        'op.create_index("ix_orders_created_at", "orders", ["created_at"])',
    ),
    shape(
        "suppression_matching_nothing",
        "# dbinit: ignore[dbinit.L002] nothing is dropped here\n"
        'op.add_column("orders", sa.Column("region", sa.Text()))',
    ),
    shape(
        "suppression_unknown_rule",
        "# dbinit: ignore[dbinit.L999] a typo\n"
        'op.create_index("ix_orders_created_at", "orders", ["created_at"])',
    ),
    # raw SQL paths of op.execute
    shape(
        "raw_multi_statement",
        'op.execute("ALTER TABLE orders ADD COLUMN region TEXT; '
        'CREATE INDEX ix_orders_region ON orders (region)")',
    ),
    shape("raw_data_update", "op.execute(\"UPDATE orders SET status = 'placed' WHERE status IS NULL\")"),
    shape(
        "raw_dollar_quoted_function",
        'op.execute("CREATE FUNCTION order_count() RETURNS bigint AS $$ SELECT count(*) FROM orders; $$ '
        'LANGUAGE sql")',
    ),
    shape(
        "raw_leading_comment",
        'op.execute("-- the report filters by note\\nCREATE INDEX ix_orders_note ON orders (note)")',
    ),
)

#: What dbinit lint reports on each shape's revisions: the table to edit.
EXPECTED: dict[str, tuple[str, ...]] = {
    "index_plain": ("dbinit.L001",),
    "index_unique_plain": ("dbinit.L001",),
    "index_raw_sql": ("dbinit.L001",),
    "index_concurrently_autocommit": (),
    "index_on_new_table": (),
    "drop_column": ("dbinit.L002",),
    "drop_column_contract": (),
    "drop_column_raw_sa_text": ("dbinit.L002",),
    "drop_column_raw_quoted_lowercase": ("dbinit.L002",),
    "drop_table": ("dbinit.L003",),
    "drop_table_contract": (),
    "rename_column": ("dbinit.L004",),
    "rename_column_contract": (),
    "rename_table": ("dbinit.L005",),
    "rename_table_contract": (),
    "alter_type": ("dbinit.L006",),
    "alter_type_raw_using": ("dbinit.L006",),
    "alter_type_new_table": (),
    "add_not_null_no_default": ("dbinit.L007",),
    "add_not_null_server_default": (),
    "add_nullable": (),
    "set_not_null": ("dbinit.L008",),
    "set_not_null_raw_triple_quoted": ("dbinit.L008",),
    "set_not_null_check_recipe": ("dbinit.L009",),
    "set_not_null_recipe_earlier_revision": (),
    "check_constraint": ("dbinit.L009",),
    "foreign_key": ("dbinit.L009",),
    "foreign_key_not_valid_then_validate": (),
    "foreign_key_not_valid_validate_same_revision": ("dbinit.L009",),
    "check_constraint_new_table": (),
    "no_lock_timeout": ("dbinit.L010",),
    "no_lock_timeout_one_per_revision": ("dbinit.L010",),
    "no_lock_timeout_each_revision": ("dbinit.L010", "dbinit.L010"),
    "lock_timeout_too_late": ("dbinit.L010",),
    "set_local_lock_timeout": (),
    "no_lock_timeout_new_table_only": (),
    "index_concurrently_in_transaction": ("dbinit.L011",),
    "drop_index_concurrently_in_transaction": ("dbinit.L011",),
    "commit_inside_migration": ("dbinit.L012",),
    "rollback_inside_migration": ("dbinit.L012",),
    "add_column_volatile_default": ("dbinit.L013",),
    "add_column_bigserial_raw": ("dbinit.L013",),
    "add_column_identity": ("dbinit.L013",),
    "add_column_stored_generated": ("dbinit.L013",),
    "add_column_now_default": (),
    "unique_constraint": ("dbinit.L014",),
    "primary_key": ("dbinit.L014",),
    "unique_using_concurrent_index": (),
    "drop_index": ("dbinit.L015",),
    "drop_index_raw_sql": ("dbinit.L015",),
    "drop_index_concurrently_autocommit": (),
    "drop_index_of_new_table": (),
    "mysql_syntax": ("dbinit.L016",),
    "sqlite_pragma_among_statements": ("dbinit.L016",),
    "expand_declared_drops_column": ("dbinit.L002", "dbinit.L020"),
    "expand_declared_renames_table": ("dbinit.L005", "dbinit.L020"),
    "expand_declared_adds_column": (),
    "expand_and_contract_in_one_release": ("dbinit.L021",),
    "contract_in_a_later_release": (),
    "contract_breaking_the_base_release": ("dbinit.L021",),
    "contract_without_from": (),
    "suppressed_with_reason": (),
    "suppressed_on_the_same_line": (),
    "suppressed_two_ids": (),
    "suppression_without_reason": ("dbinit.L001", "dbinit.L100"),
    "suppression_matching_nothing": ("dbinit.L101",),
    "suppression_unknown_rule": ("dbinit.L001", "dbinit.L102"),
    "raw_multi_statement": ("dbinit.L001",),
    "raw_data_update": (),
    "raw_dollar_quoted_function": (),
    "raw_leading_comment": ("dbinit.L001",),
}

BY_NAME: dict[str, Shape] = {s.name: s for s in SHAPES}


# -- the builder -------------------------------------------------------------------------------

_UPGRADE_STUB = '    """Upgrade schema."""\n    pass\n'


def _indent(body: str) -> str:
    return "".join(f"    {line}\n" if line else "\n" for line in body.splitlines())


def _fill(path: Path, body: str, module: tuple[str, ...] = ()) -> None:
    """Write ``body`` into the ``upgrade()`` Alembic generated, ``module`` lines above it."""
    text = path.read_text()
    if _UPGRADE_STUB not in text:
        raise AssertionError(f"{path}: not the generic template's revision (no empty upgrade())")
    text = text.replace(_UPGRADE_STUB, '    """Upgrade schema."""\n' + _indent(body), 1)
    if module:
        text = text.replace("\n\ndef upgrade()", "\n" + "\n".join(module) + "\n\n\ndef upgrade()", 1)
    path.write_text(text)


def build(shape: Shape, root: Path) -> Path:
    """The shape as an Alembic project under ``root``: its directory (alembic.ini inside)."""
    from alembic import command
    from alembic.config import Config

    project = root / shape.name
    project.mkdir(parents=True)
    ini = str(project / "alembic.ini")
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # alembic init prints what it creates
        command.init(Config(ini, stdout=quiet), str(project / "migrations"), template="generic")
        config = Config(ini, stdout=quiet)
        base = command.revision(config, message="existing tables", rev_id=BASE)
        assert base is not None and not isinstance(base, list)
        _fill(Path(base.path), BASE_BODY)
        for rev_id, revision in zip(shape.revision_ids, shape.revisions, strict=True):
            script = command.revision(config, message=shape.name, rev_id=rev_id)
            assert script is not None and not isinstance(script, list)
            body = f"{LOCK_TIMEOUT}\n{revision.body}" if shape.lock_timeout else revision.body
            _fill(Path(script.path), body, revision.module)
    return project
