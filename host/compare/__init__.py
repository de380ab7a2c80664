"""qbench.host.compare"""
