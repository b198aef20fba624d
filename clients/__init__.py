"""twinserve clients package (filled in by later work)."""
