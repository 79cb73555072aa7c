"""Whole pipelines: the YAML spec (``spec``), running it (``run``) and its summary (``report``)."""
