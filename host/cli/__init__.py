"""qbench.host.cli"""
