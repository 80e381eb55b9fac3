"""The web page: a small HTML page at `/` that lists, searches and adds tutorials.

It is a client of the JSON API like any other (a little vanilla JavaScript calling `/tutorials`),
so it needs no routes of its own beyond serving itself. See `page.py`.
"""
