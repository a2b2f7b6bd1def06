"""The node's client certificate: renewed before it expires, without dropping the tunnel."""

from edgecore.certmanager.rotation import CertRotator, complete_interrupted_rotation

__all__ = ["CertRotator", "complete_interrupted_rotation"]
