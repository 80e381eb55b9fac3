"""The web page: a catalog to use from a browser, at `/`.

It is a client of the JSON API like any other (vanilla JavaScript calling `/tutorials`,
`/tutorials/count`, `/tags`), so the page decides nothing the service does not. Its own routes
serve it (`page.py`) and, when tokens are configured, let a person sign in for writes
(`signin.py`: a session cookie and a CSRF token, checked by `api.security.WriteGuardMiddleware`).
"""
