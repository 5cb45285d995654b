"""Models: where they come from (sources, hub, GGUF), what they are made of (inspect), and the
one loader."""
