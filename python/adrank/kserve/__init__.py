"""adrank.kserve: the Open Inference Protocol (KServe v2) stubs, generated at build time from proto/adrank/kserve/."""
