"""Destinations that the shipper sends spooled events to, one module per output type."""
