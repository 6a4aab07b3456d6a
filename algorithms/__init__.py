"""Teachers (RLlib), imitators (torch) and baselines: each algorithm readable in one file."""
