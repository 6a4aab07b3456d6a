"""An example of a user's own package that adds an imitator and an env family to understudy
(docs/extending.md)."""
