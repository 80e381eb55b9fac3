"""The text search configuration, shared by the schema (the stored document) and the queries.

Its own module so that the queries can name it without importing the ORM models: the two must
agree, or the index is never used.
"""

SEARCH_CONFIG = "english"
