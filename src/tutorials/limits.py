"""The numbers the rules are made of, importable without pydantic.

`tutorials.schemas` applies them (and re-exports them); they live here so that what only needs
a number (the command line's help, a default in a signature) does not pay for building the
models: `tutorials --help` must not import pydantic.
"""

#: Ids are bigint identities.
MAX_ID = 2**63 - 1
#: Versions are integers, starting at 1.
VERSION_MAX = 2**31 - 1
NAME_MAX = 255
URL_MAX = 2048
DESCRIPTION_MAX = 20_000
TAG_MAX = 64
TAGS_MAX = 50
PAGE_MAX = 100
DEFAULT_PAGE = 20
QUERY_MAX = 1000
#: Rows per batch (one transaction) of a bulk import. 10,000 keeps two batches in flight
#: within ~20 MB.
DEFAULT_BATCH = 10_000
#: Streaming replicas `tutorials db start --replicas N` makes on one machine, at most.
MAX_REPLICAS = 8
