"""The engine. Never imports Qt; heavy libraries are imported inside functions."""
