"""Extract: sources that read from outside systems into Arrow batches."""
