"""Collect Proofpoint on Demand logs into a durable spool and ship them on."""

__version__ = "0.1.0"
