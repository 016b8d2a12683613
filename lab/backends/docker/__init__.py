"""The Docker backend: a container per host running the agent (agent.py) on real
interfaces (net.py). backend.py keeps to the contract, provision.py brings the run's
switch, segments and containers up and takes them down, control.py is the lab's end of
each agent's control socket; labels and gc for clean-up; the engine client (engine.py),
the base image (baseimage.py) and the node image (image.py)."""
