"""An example of a user's own package that adds an imitator to understudy (docs/extending.md)."""
