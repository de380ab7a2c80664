"""qbench.host.transport"""
