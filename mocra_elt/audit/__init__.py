"""Audit: the record of every run, stage, committed load and watermark."""
