"""Tools for operators and demos: topic bootstrap, the process launcher and its supervisors,
re-driving dead letters, and the demo data loader."""
