"""twinserve export package (filled in by later work)."""
