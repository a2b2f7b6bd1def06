"""keadm: set up the cloud side, hand out join tokens, join and reset edge gateways."""
