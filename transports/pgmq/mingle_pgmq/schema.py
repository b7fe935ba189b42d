"""Install the SQL-only PGMQ schema that kombu's pgmq transport needs.

``pgmq`` (the client kombu 5.7 pins, 1.1.4) ships the extension as plain SQL
(``pgmq/sql/pgmq.sql``, PGMQ 1.13.0), for servers without the extension.
That SQL has ``pgmq.send_topic(routing_key, msg)``, ``(…, delay)`` and
``(…, headers, delay)`` but not ``(routing_key, msg, headers)``, which the
client calls for every message with headers: every kombu fanout publish
(pidbox broadcasts such as ``hello`` and ``revoke``) then fails with
``function pgmq.send_topic(routing_key => text, msg => jsonb, headers => jsonb)
does not exist``. :data:`SEND_TOPIC_WITH_HEADERS` adds that overload.

Usage: ``python -m mingle_pgmq.schema postgresql://user@host:5432/db``.
"""

from __future__ import annotations

import sys

__all__ = ["SEND_TOPIC_WITH_HEADERS", "install_schema"]

#: The overload the client calls and the shipped SQL lacks.
SEND_TOPIC_WITH_HEADERS = """
CREATE OR REPLACE FUNCTION pgmq.send_topic(routing_key text, msg jsonb, headers jsonb)
    RETURNS integer LANGUAGE sql VOLATILE
AS $$ SELECT pgmq.send_topic(routing_key, msg, headers, 0) $$;
"""


def install_schema(dsn: str) -> str:
    """Run the client's embedded ``pgmq.sql`` and the overload on ``dsn``; return the PGMQ version."""
    import psycopg
    from pgmq.install import get_embedded_install_sql, get_embedded_sql_version, install_pgmq_sql

    install_pgmq_sql(get_embedded_install_sql(), dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEND_TOPIC_WITH_HEADERS)
    return str(get_embedded_sql_version())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mingle_pgmq.schema POSTGRES_DSN", file=sys.stderr)
        return 2
    print(f"PGMQ {install_schema(args[0])} SQL installed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
