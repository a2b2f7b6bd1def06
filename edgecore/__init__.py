"""EdgeCore: the agent on each edge gateway: stores what the cloud sent, runs pods, bridges devices."""
