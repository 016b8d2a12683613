"""The Docker backend: a container per host running the agent (agent.py) on real
interfaces (net.py); labels and gc for clean-up; the engine client (engine.py), the base
image (baseimage.py) and the node image (image.py)."""
