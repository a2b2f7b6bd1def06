"""EdgeController: which objects belong to which edge node (down), and node and pod status (up)."""
