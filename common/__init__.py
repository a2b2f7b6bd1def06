"""Shared by CloudCore, EdgeCore, keadm and mappers; imports none of them."""
