"""qbench.host.quantize"""
