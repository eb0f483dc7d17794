"""adrank.v1: the wire contract's Python stubs, generated at build time from proto/adrank/v1/*.proto."""
