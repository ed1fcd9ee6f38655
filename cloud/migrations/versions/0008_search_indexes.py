"""search indexes: Person Name prefix matching on PostgreSQL

The casefolded Person Name groups (patients.patient_name_alphabetic, _ideographic,
_phonetic) are matched with ``LIKE 'zhang%'`` for ``PatientName=zhang*``. On PostgreSQL a
btree with the default operator class serves LIKE only when the database collation is C;
under ``C.UTF-8``, ``en_US.UTF-8`` and the like the search read every study. The indexes are
rebuilt with ``varchar_pattern_ops``, which serves LIKE prefixes under any collation, and
equality as before. The phonetic group gets its index too, so that the three groups' OR is
answered from indexes. SQLite (where LIKE is case-insensitive and these indexes only serve
equality) only gains the phonetic index.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 23:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

NAME_GROUPS = ("patient_name_alphabetic", "patient_name_ideographic")  # indexed since 0001
PHONETIC = "patient_name_phonetic"
PATTERN_OPS = "varchar_pattern_ops"


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgresql():
        for column in NAME_GROUPS:
            op.drop_index(f"ix_patients_{column}", table_name="patients")
            op.create_index(
                f"ix_patients_{column}",
                "patients",
                [column],
                postgresql_ops={column: PATTERN_OPS},
            )
    op.create_index(
        f"ix_patients_{PHONETIC}",
        "patients",
        [PHONETIC],
        postgresql_ops={PHONETIC: PATTERN_OPS},
    )


def downgrade() -> None:
    op.drop_index(f"ix_patients_{PHONETIC}", table_name="patients")
    if _postgresql():
        for column in NAME_GROUPS:
            op.drop_index(f"ix_patients_{column}", table_name="patients")
            op.create_index(f"ix_patients_{column}", "patients", [column])
