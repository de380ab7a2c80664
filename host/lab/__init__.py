"""Boards shared through a labgrid coordinator: places, leases, health and quarantine."""
