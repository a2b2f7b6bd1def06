"""CloudCore: turns Kubernetes List/Watch into acknowledged, deduplicated messages for each edge node."""
