"""Database access: the private embedded PostgreSQL server and friends."""
