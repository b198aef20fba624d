"""twinserve serving package (filled in by later work)."""
