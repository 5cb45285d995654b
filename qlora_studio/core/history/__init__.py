"""The run history: a SQLite store of every run and the recorder that fills it."""
