"""qbench.host.report"""
