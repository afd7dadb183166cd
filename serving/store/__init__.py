"""The operational store: SQLAlchemy 2 tables, Alembic migrations, and the functions that read
and write them. SQLite is the embedded default; PostgreSQL is the production choice."""
