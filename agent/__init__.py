"""qbench agent: runs models on the device. Imports only qbench.protocols, numpy, pyzmq and a runtime."""

AGENT_VERSION = "0.1.0"
